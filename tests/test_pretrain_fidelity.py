"""Paper-profile settings that follow the authors' code where the paper is silent (issue 12).

SparK: official ``lr_wd_annealing`` (lr warm-up from 0.005 x peak, cosine to 0.001 x peak; weight
decay cosine 0.04 -> 0.2), LAMB clipping at 5, no-decay groups, drop path, bicubic crops.
BYOL: target momentum 0.996 -> 1 (cosine). SwAV: prototypes without bias.
"""

from __future__ import annotations

import math

import pytest
import torch

from ssl_lib.augment import RandomResizedCrop
from ssl_lib.pretrain import PROFILES, param_table
from ssl_lib.pretrain import build_module
from ssl_lib.pretrain.spark import SparKSchedule, cosine_between, spark_lr_factor


def _official_lr_wd(peak, wd, wd_end, it, wp, max_it):
    """The official formulas as numbers (SparK utils/lr_control.py, read by hand)."""
    if it < wp:
        lr = 0.005 * peak + 0.995 * peak * it / wp
    else:
        lr = 0.001 * peak + 0.999 * peak * (0.5 + 0.5 * math.cos(math.pi * (it - wp) / (max_it - 1 - wp)))
    w = wd_end + (wd - wd_end) * (0.5 + 0.5 * math.cos(math.pi * it / (max_it - 1)))
    return lr, w


def test_spark_paper_profile_settings():
    c = PROFILES["paper"]["spark"]
    assert (c.decoder, c.decoder_width, c.drop_path, c.interpolation, c.grad_clip) == ("official", None, 0.05, "bicubic", 5.0)
    assert (c.lr_start, c.lr_end, c.weight_decay, c.weight_decay_end, c.betas, c.warmup_epochs) == \
        (0.005, 0.001, 0.04, 0.2, (0.9, 0.95), 40)
    assert PROFILES["quick"]["spark"].decoder == "light"  # the quick profile keeps our light decoder


def test_spark_schedule_matches_official_lr_and_weight_decay():
    module = build_module("spark", "smoke", total_steps=50, steps_per_epoch=5, warmup_epochs=2)
    opt_conf = module.configure_optimizers()
    opt, sched = opt_conf["optimizer"], opt_conf["lr_scheduler"]["scheduler"]
    assert isinstance(sched, SparKSchedule)
    peak, cfg = module.cfg.lr, module.cfg
    decay, no_decay = opt.param_groups
    for it in range(50):
        lr, wd = _official_lr_wd(peak, cfg.weight_decay, cfg.weight_decay_end, it, 10, 50)
        assert decay["lr"] == pytest.approx(lr, rel=1e-12) and no_decay["lr"] == pytest.approx(lr, rel=1e-12)
        assert decay["weight_decay"] == pytest.approx(wd, rel=1e-12) and no_decay["weight_decay"] == 0.0
        opt.step()
        sched.step()
    assert spark_lr_factor(0, 50, 10) == pytest.approx(0.005) and spark_lr_factor(49, 50, 10) == pytest.approx(0.001)
    assert cosine_between(0, 50, 0.04, 0.2) == pytest.approx(0.04) and cosine_between(49, 50, 0.04, 0.2) == pytest.approx(0.2)


def test_spark_no_decay_groups_lamb_clip_and_bicubic():
    module = build_module("spark", "smoke")
    opt = module.configure_optimizers()["optimizer"]
    assert type(opt).__name__ == "Lamb" and opt.defaults["max_grad_norm"] == 5.0
    assert tuple(opt.defaults["betas"]) == (0.9, 0.95)
    names = {id(p): n for n, p in module.spark.named_parameters()}
    decay, no_decay = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    assert all(f"mask_tokens.{i}" in no_decay for i in range(4))
    assert all(n.endswith(".weight") and "bn" not in n and "norm" not in n for n in decay)
    assert "encoder.bn1.weight" in no_decay and "head.bias" in no_decay and "encoder.conv1.weight" in decay
    assert len(decay) + len(no_decay) == len(names)
    crop = module.view_transform.transforms[0]
    assert isinstance(crop, RandomResizedCrop) and crop.mode == "bicubic"
    x = torch.rand(2, 1, 32, 32)
    boxes = crop.boxes(2, device="cpu", generator=torch.Generator().manual_seed(0))
    bilinear = RandomResizedCrop(crop.size, crop.scale, mode="bilinear").apply(x, boxes)
    assert not torch.allclose(crop.apply(x, boxes), bilinear)


def test_paper_spark_model_drop_path_and_parameter_count():
    module = build_module("spark", "paper")
    assert module.spark.drop_path_rate == 0.05 and module.spark.decoder_width == 768
    table = param_table("paper", ["spark"])
    assert table.loc["spark", "encoder_with_fc"] == pytest.approx(25.6, abs=0.05) == table.loc["spark", "paper"]
    assert table.loc["spark", "trainable"] == pytest.approx(52.9, abs=0.05)


# ---------------------------------------------------------------------------------- contrastive
def test_byol_paper_settings():
    c = PROFILES["paper"]["byol"]
    assert (c.momentum_start, c.momentum_end, c.loss_scale) == (0.996, 1.0, 4.0)


def test_byol_momentum_now_uses_the_configured_schedule(monkeypatch):
    module = build_module("byol", "smoke", total_steps=101, momentum_start=0.996)
    for step, want in ((0, 0.996), (50, 0.998), (100, 1.0)):
        monkeypatch.setattr(type(module), "global_step", property(lambda self, s=step: s))
        assert module.momentum_now() == pytest.approx(want)


def test_byol_loss_is_the_sum_of_both_directions_of_2_minus_2cos():
    import torch.nn.functional as F

    module = build_module("byol", "smoke", loss_scale=4.0)
    torch.manual_seed(0)
    x = torch.randn(4, 1, 32, 32)
    g = torch.Generator().manual_seed(1)
    loss = module.step_loss(x, g)
    g = torch.Generator().manual_seed(1)
    v0, v1 = (module.rgb(v) for v in module.views(x, g))
    with torch.no_grad():
        p0, p1, z0, z1 = module.online(v0), module.online(v1), module.target(v0), module.target(v1)
    byol = (2 - 2 * F.cosine_similarity(p0, z1)).mean() + (2 - 2 * F.cosine_similarity(p1, z0)).mean()
    torch.testing.assert_close(loss.detach() + 4, byol, rtol=1e-5, atol=1e-5)


def test_swav_prototypes_have_no_bias_and_lars_covers_every_parameter():
    c = PROFILES["paper"]["swav"]
    assert c.exclude_norm_bias is False and PROFILES["quick"]["swav"].exclude_norm_bias is True
    module = build_module("swav", "smoke", exclude_norm_bias=False)
    assert module.prototypes.bias is None and module.prototypes.weight.shape == (16, 64)
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert len(groups) == 1 and groups[0]["weight_decay"] == module.cfg.weight_decay
    assert sum(p.numel() for p in groups[0]["params"]) == sum(p.numel() for p in module.trainable_parameters())
    module.step_loss(torch.randn(4, 1, 32, 32), torch.Generator().manual_seed(0))
    torch.testing.assert_close(module.prototypes.weight.norm(dim=1), torch.ones(16))
    quick = build_module("swav", "smoke", exclude_norm_bias=True).configure_optimizers()["optimizer"]
    assert [g["weight_decay"] for g in quick.param_groups][1] == 0.0
