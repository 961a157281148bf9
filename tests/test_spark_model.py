"""Tests for ssl_lib.models.spark (SparK, Tian et al. 2023): sparse encoder, decoder, loss, masks."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from ssl_lib.models.backbone import build_backbone, encoder_state_dict
from ssl_lib.models.spark import SparK, masked_batch_norm


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine params and running stats, so that eval-mode checks mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def _model(arch: str = "resnet18", size: int = 64, **kw) -> SparK:
    torch.manual_seed(0)
    kw.setdefault("decoder_width", 128)
    model = SparK(build_backbone(arch), image_size=size, **kw)
    _randomise_bn(model.encoder)
    return model


def _dense_stages(encoder: torchvision.models.ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    x = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(x))))
    out = []
    for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4):
        x = layer(x)
        out.append(x)
    return out


def _up(mask: torch.Tensor, size: int) -> torch.Tensor:
    r = size // mask.shape[-1]
    return mask.repeat_interleave(r, 2).repeat_interleave(r, 3)


def _fixed_mask() -> torch.Tensor:
    """Batch 3 on a 2x2 grid, each sample with a different visible pattern (True = visible)."""
    return torch.tensor([[[[True, False], [False, True]]],
                         [[[False, True], [True, False]]],
                         [[[True, True], [False, False]]]])


# --- (f) random masks -------------------------------------------------------------------------
def test_random_mask_exact_count_and_reproducible():
    model = SparK(build_backbone("resnet18"), image_size=224)  # 7x7 grid: round(49 * 0.4) = 20 visible
    assert model.downsample_ratio == 32 and model.num_visible == 20
    m1 = model.random_mask(16, generator=torch.Generator().manual_seed(3))
    m2 = model.random_mask(16, generator=torch.Generator().manual_seed(3))
    m3 = model.random_mask(16, generator=torch.Generator().manual_seed(4))
    assert m1.dtype == torch.bool and m1.shape == (16, 1, 7, 7)
    assert (m1.sum(dim=(1, 2, 3)) == 20).all()
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)
    assert not (m1 == m1[0]).all()  # samples differ from each other
    ratio = SparK(build_backbone("resnet18"), image_size=64, mask_ratio=0.25)
    assert (ratio.random_mask(5).sum(dim=(1, 2, 3)) == 3).all()  # round(4 * 0.75)


# --- masked batch norm ------------------------------------------------------------------------
def test_masked_batch_norm_uses_visible_positions_only():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, 8) * 2 + 1
    visible = _up(_fixed_mask(), 8).float()
    bn = nn.BatchNorm2d(5, momentum=0.3)
    _randomise_bn(bn)
    ref = nn.BatchNorm1d(5, momentum=0.3)
    ref.load_state_dict(bn.state_dict())
    idx = visible[:, 0].bool()
    gathered = x.permute(0, 2, 3, 1)[idx]  # (N_visible, C)

    y = masked_batch_norm(x, visible, bn)  # training mode: visible-only batch statistics
    torch.testing.assert_close(y.permute(0, 2, 3, 1)[idx], ref(gathered), rtol=1e-5, atol=1e-5)
    assert (y.permute(0, 2, 3, 1)[~idx] == 0).all()
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert bn.num_batches_tracked.item() == 1

    bn.eval(), ref.eval()
    before = bn.running_mean.clone()
    y = masked_batch_norm(x, visible, bn)
    torch.testing.assert_close(y.permute(0, 2, 3, 1)[idx], ref(gathered), rtol=1e-5, atol=1e-5)
    assert torch.equal(bn.running_mean, before) and bn.num_batches_tracked.item() == 1


# --- (a) + (b) sparse encoder ------------------------------------------------------------------
@pytest.mark.parametrize("train", [False, True])
def test_visible_features_ignore_masked_pixels_and_masked_stay_zero(train):
    model = _model()
    model.train(train)
    mask = _fixed_mask()
    torch.manual_seed(1)
    x1 = torch.randn(3, 3, 64, 64)
    x2 = torch.where(_up(mask, 64), x1, torch.randn_like(x1) * 5 + 3)  # differs only in masked patches
    assert not torch.equal(x1, x2)
    f1, f2 = model.sparse_features(x1, mask), model.sparse_features(x2, mask)
    assert [f.shape[-1] for f in f1] == [16, 8, 4, 2]
    for a, b in zip(f1, f2):
        vis = _up(mask, a.shape[-1]).expand_as(a)
        torch.testing.assert_close(a[vis], b[vis], rtol=0, atol=0)
        assert (a[~vis] == 0).all() and (b[~vis] == 0).all()  # (b): masked positions exactly zero
        assert a[vis].abs().sum() > 0


# --- (c) plain torchvision encoder -------------------------------------------------------------
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_encoder_is_plain_torchvision_and_all_visible_equals_dense(arch):
    model = _model(arch, decoder_width=64)
    reference = build_backbone(arch).state_dict()
    own = model.encoder.state_dict()
    assert {k: v.shape for k, v in own.items()} == {k: v.shape for k, v in reference.items()}
    tv = getattr(torchvision.models, arch)(weights=None)
    tv.fc = nn.Identity()
    tv.load_state_dict(encoder_state_dict(model.encoder), strict=True)

    x = torch.randn(2, 3, 64, 64)
    ones = torch.ones(2, 1, 2, 2, dtype=torch.bool)
    model.eval()
    for sparse, dense in zip(model.sparse_features(x, ones), _dense_stages(tv.eval(), x)):
        torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-5 * dense.abs().max().item())

    # training mode (float64: tiny 2x2 batches make BN ill-conditioned in float32): all-visible
    # batch statistics and running-stat updates match dense BN
    model.double().train(), tv.double().train()
    sparse, dense = model.sparse_features(x.double(), ones)[-1], _dense_stages(tv, x.double())[-1]
    torch.testing.assert_close(sparse, dense, rtol=1e-7, atol=1e-7)
    for k, v in tv.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[k], v, rtol=1e-7, atol=1e-7)


# --- (d) loss on masked patches only -----------------------------------------------------------
def test_loss_gradient_is_zero_at_visible_patches():
    model = _model()
    mask = _fixed_mask()
    kept = {}

    def keep(module, inputs, output):
        output.retain_grad()
        kept["pred"] = output

    model.head.register_forward_hook(keep)
    out = model(torch.randn(3, 3, 64, 64), mask)
    out["loss"].backward()
    grad = kept["pred"].grad.abs()  # (B, C, H, W) gradient w.r.t. the decoder's output
    vis = _up(mask, 64).expand_as(grad)
    assert (grad[vis] == 0).all()
    per_patch = grad.reshape(3, 3, 2, 32, 2, 32).sum(dim=(1, 3, 5))
    assert (per_patch[~mask[:, 0]] > 0).all()
    assert model.encoder.conv1.weight.grad.abs().sum() > 0 and model.mask_tokens[3].grad.abs().sum() > 0


def test_patch_loss_normalises_patches_and_ignores_visible_predictions():
    model = _model()
    mask = _fixed_mask()
    torch.manual_seed(2)
    x, pred = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64)
    loss = model.patch_loss(pred, x, mask)
    pred2 = torch.where(_up(mask, 64), torch.randn_like(pred) * 10, pred)
    torch.testing.assert_close(model.patch_loss(pred2, x, mask), loss)
    pred3 = torch.where(_up(mask, 64), pred, pred + 1)
    assert model.patch_loss(pred3, x, mask) > loss + 0.5
    # per-patch normalisation (all channels together, as official SparK): an affine change of each
    # patch's values changes nothing
    scale = (torch.rand(3, 1, 2, 1, 2, 1) + 0.5).expand(3, 3, 2, 1, 2, 1) \
        .repeat_interleave(32, 3).repeat_interleave(32, 5)
    x_affine = (x.reshape(3, 3, 2, 32, 2, 32) * scale + 7).reshape(x.shape)
    torch.testing.assert_close(model.patch_loss(pred, x_affine, mask), loss, rtol=1e-4, atol=1e-4)


def test_perfect_prediction_gives_zero_loss_and_image_reconstruction():
    model = _model()
    mask = _fixed_mask()
    x = torch.randn(3, 3, 64, 64) * 0.7 + 0.2
    p = x.reshape(3, 3, 2, 32, 2, 32)
    mean, var = p.mean(dim=(1, 3, 5), keepdim=True), p.var(dim=(1, 3, 5), keepdim=True)  # unbiased, as official
    ideal = ((p - mean) / (var + 1e-6).sqrt()).reshape(x.shape)
    model.decode = lambda feats, m, visible_per_sample=None: ideal  # instance override: forward wiring with a perfect decoder
    out = model(x, mask)
    assert out["loss"].item() < 1e-8
    torch.testing.assert_close(out["reconstruction"], x, rtol=1e-4, atol=1e-4)
    assert out["mask"] is mask


# --- (e) training reduces the loss --------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["official", "light"])
def test_loss_falls_with_adam_on_fixed_batch(decoder):
    torch.manual_seed(0)
    model = SparK(build_backbone("resnet18"), image_size=64, decoder=decoder, decoder_width=128)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    blobs = torch.stack([torch.exp(-((xx - a) ** 2 + (yy - b) ** 2) * 6) for a, b in
                         [(-.5, -.3), (.4, .2), (0, .5), (.3, -.6)]])
    x = (blobs + 0.05 * torch.randn(4, 64, 64)).unsqueeze(1).repeat(1, 3, 1, 1)  # grey repeated
    mask = model.random_mask(4, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        out = model(x, mask)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert out["reconstruction"].shape == x.shape and out["mask"].shape == (4, 1, 2, 2)
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:3]) / 3


def test_forward_draws_mask_when_none():
    model = _model()
    out = model(torch.randn(2, 3, 64, 64))
    assert out["mask"].shape == (2, 1, 2, 2) and (out["mask"].sum(dim=(1, 2, 3)) == 2).all()
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])


# --- (g) bad input --------------------------------------------------------------------------------
def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="multiple of 32"):
        SparK(build_backbone("resnet18"), image_size=48)
    with pytest.raises(ValueError, match="mask_ratio"):
        SparK(build_backbone("resnet18"), image_size=64, mask_ratio=1.0)
    with pytest.raises(ValueError, match="decoder_width"):
        SparK(build_backbone("resnet18"), image_size=64, decoder_width=48)
    with pytest.raises(ValueError, match="decoder"):
        SparK(build_backbone("resnet18"), image_size=64, decoder="heavy")
    with pytest.raises(ValueError, match="drop_path_rate"):
        SparK(build_backbone("resnet18"), image_size=64, drop_path_rate=1.0)
    with pytest.raises(ValueError, match="ResNet"):
        SparK(nn.Conv2d(3, 3, 1), image_size=64)
    model = _model()
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="image size"):
        model(torch.randn(2, 3, 48, 48))
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match="mask"):
        model(x, torch.ones(2, 1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        model.sparse_features(x, torch.ones(3, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        model(x, torch.ones(2, 1, 2, 2))  # float, not bool


def test_gathered_batch_norm_equals_masked_sums():
    """The fast path (visible rows gathered, native batch norm, scattered back) = the masked-sum path."""
    from ssl_lib.models.spark import _Masks

    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, 8, dtype=torch.float64) * 2 + 1
    masks = _Masks(_fixed_mask(), x.dtype)
    bn_a, bn_b = nn.BatchNorm2d(5, momentum=0.3).double(), nn.BatchNorm2d(5, momentum=0.3).double()
    _randomise_bn(bn_a)
    bn_b.load_state_dict(bn_a.state_dict())
    rows = masks.rows(x)
    assert rows.numel() == int(masks.at(x).sum())
    fast = masked_batch_norm(x, masks.at(x), bn_a, rows)
    slow = masked_batch_norm(x, masks.at(x), bn_b)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    for k, v in bn_a.state_dict().items():
        torch.testing.assert_close(v, bn_b.state_dict()[k], rtol=1e-12, atol=1e-12)
