"""SparK with the official decoder against an independent reading of the official SparK code.

The reference below is written from the formulas of the official SparK code (Tian et al. 2023,
github.com/keyu-tian/SparK, ``pretrain/{encoder,decoder,spark}.py``) as plain functional ops,
sharing nothing with :mod:`ssl_lib.models.spark` but the weights:

- sparse conv/pool: the dense op, then the output multiplied by the mask at its resolution;
- sparse BN: the visible positions gathered into ``(N, C)`` rows, a BatchNorm1d over them, the
  result scattered back into zeros;
- densify: sparse BN, masked positions replaced by the stage's mask token, the projection conv;
- decoder: ``x = 0``; for each up-block ``i``: ``x += to_dec[i]`` (if any), ``x = block_i(x)``
  with ConvTranspose(k4, s2, p1), conv3x3, BN, ReLU6, conv3x3, BN; then the 1x1 projection;
- loss: patchify to ``(B, L, p*p*C)``, normalise each row by its mean and
  ``(unbiased var + 1e-6) ** 0.5``, squared error averaged per row, then over masked rows with
  ``sum / (count + 1e-8)``; the visualised reconstruction is ``unpatchify(rec * std + mean)``.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from ssl_lib.models.backbone import build_backbone
from ssl_lib.models.spark import SparK, _drop_path


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


# ---------------------------------------------------------------------------------- reference
def _active_at(active_b1ff: torch.Tensor, h: int) -> torch.Tensor:
    r = h // active_b1ff.shape[-1]
    return active_b1ff.repeat_interleave(r, 2).repeat_interleave(r, 3)


def _sp_bn(x: torch.Tensor, active_b1ff: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Official SparseBatchNorm2d: BatchNorm1d over the gathered visible rows, scattered back into zeros."""
    ii = _active_at(active_b1ff, x.shape[2]).squeeze(1).nonzero(as_tuple=True)
    bhwc = x.permute(0, 2, 3, 1)
    nc = F.batch_norm(bhwc[ii], bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias,
                      training=True, momentum=0.1, eps=bn.eps)
    out = torch.zeros_like(bhwc)
    out[ii] = nc
    return out.permute(0, 3, 1, 2)


def _sp(x: torch.Tensor, active_b1ff: torch.Tensor) -> torch.Tensor:
    return x * _active_at(active_b1ff, x.shape[2])


def _ref_encoder(enc: nn.Module, x: torch.Tensor, active: torch.Tensor) -> list[torch.Tensor]:
    x = _sp(enc.conv1(x), active)
    x = F.relu(_sp_bn(x, active, enc.bn1))
    x = _sp(enc.maxpool(x), active)
    feats = []
    for layer in (enc.layer1, enc.layer2, enc.layer3, enc.layer4):
        for blk in layer:
            shortcut = x
            convs = [getattr(blk, f"conv{i}") for i in (1, 2, 3) if hasattr(blk, f"conv{i}")]
            bns = [getattr(blk, f"bn{i}") for i in (1, 2, 3) if hasattr(blk, f"bn{i}")]
            y = x
            for j, (conv, bn) in enumerate(zip(convs, bns)):
                y = _sp_bn(_sp(conv(y), active), active, bn)
                if j < len(convs) - 1:
                    y = F.relu(y)
            if blk.downsample is not None:
                shortcut = _sp_bn(_sp(blk.downsample[0](x), active), active, blk.downsample[1])
            x = F.relu(y + shortcut)
        feats.append(x)
    return feats


def _bn_train(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(x, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias,
                        training=True, momentum=0.1, eps=bn.eps)


def _ref_block(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    up = blk.up
    x = F.conv_transpose2d(x, up.weight, up.bias, stride=2, padding=1)
    c1, b1, _, c2, b2 = blk.conv
    x = F.relu6(_bn_train(F.conv2d(x, c1.weight, None, padding=1), b1))
    return _bn_train(F.conv2d(x, c2.weight, None, padding=1), b2)


def reference_spark(model: SparK, inp: torch.Tensor, active: torch.Tensor):
    """(loss, visualised reconstruction) from the official formulas, with ``model``'s weights."""
    p = 32
    masked = inp * _active_at(active, inp.shape[2])
    feats = _ref_encoder(model.encoder, masked, active)[::-1]  # smallest first
    tokens = list(model.mask_tokens)[::-1]
    norms, projs = list(model.densify_norms)[::-1], list(model.projs)[::-1]
    to_dec, cur = [], active
    for i, f in enumerate(feats):
        f = _sp_bn(f, active, norms[i])
        f = torch.where(cur.expand_as(f), f, tokens[i].expand_as(f))
        to_dec.append(projs[i](f))
        cur = cur.repeat_interleave(2, 2).repeat_interleave(2, 3)
    x = 0
    for i, blk in enumerate(model.decoder):
        if i < len(to_dec):
            x = x + to_dec[i]
        x = _ref_block(blk, x)
    rec_bchw = F.conv2d(x, model.head.weight, model.head.bias)

    def patchify(t):
        B, C, H, W = t.shape
        t = t.reshape(B, C, H // p, p, W // p, p)
        return torch.einsum("bchpwq->bhwpqc", t).reshape(B, (H // p) * (W // p), C * p * p)

    def unpatchify(t, shape):
        B, C, H, W = shape
        t = t.reshape(B, H // p, W // p, p, p, C)
        return torch.einsum("bhwpqc->bchpwq", t).reshape(B, C, H, W)

    inp_l, rec = patchify(inp), patchify(rec_bchw)
    mean = inp_l.mean(dim=-1, keepdim=True)
    var = (inp_l.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
    target = (inp_l - mean) / var
    l2 = ((rec - target) ** 2).mean(dim=2)
    non_active = active.logical_not().int().view(active.shape[0], -1)
    loss = l2.mul(non_active).sum() / (non_active.sum() + 1e-8)
    return loss, unpatchify(rec * var + mean, inp.shape)


def _randomise(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
        for t in model.mask_tokens:
            t.copy_(torch.randn(t.shape, generator=g))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_official_decoder_matches_official_formulas(arch):
    torch.manual_seed(0)
    model = SparK(build_backbone(arch), image_size=64, decoder="official", decoder_width=64).double().train()
    _randomise(model)
    ref = copy.deepcopy(model)
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64) * 0.8 + 0.1
    active = torch.tensor([[[[True, False], [False, True]]], [[[False, True], [True, True]]],
                           [[[True, False], [False, False]]]])
    out = model(x, active)
    ref_loss, ref_rec = reference_spark(ref, x, active)
    torch.testing.assert_close(out["loss"], ref_loss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out["reconstruction"], ref_rec.detach(), rtol=1e-9, atol=1e-9)
    # the same gradients for every parameter (encoder, densify, mask tokens, decoder)
    out["loss"].backward()
    ref_loss.backward()
    ours, theirs = dict(model.named_parameters()), dict(ref.named_parameters())
    for name, p in ours.items():
        g_ref = theirs[name].grad
        assert p.grad is not None and g_ref is not None, name
        torch.testing.assert_close(p.grad, g_ref, rtol=1e-8, atol=1e-10, msg=name)


def test_official_decoder_structure_and_init():
    torch.manual_seed(0)
    model = SparK(build_backbone("resnet50"), image_size=64)  # defaults: official decoder, width 768
    assert model.decoder_name == "official" and model.decoder_width == 768
    widths = [768 // 2 ** i for i in range(6)]
    assert [b.up.in_channels for b in model.decoder] == widths[:-1]
    for blk, cin, cout in zip(model.decoder, widths[:-1], widths[1:]):
        assert (blk.up.kernel_size, blk.up.stride, blk.up.padding, blk.up.out_channels) == ((4, 4), (2, 2), (1, 1), cin)
        c1, b1, act, c2, b2 = blk.conv
        assert (c1.in_channels, c1.out_channels, c1.kernel_size) == (cin, cin, (3, 3))
        assert isinstance(b1, nn.BatchNorm2d) and isinstance(act, nn.ReLU6)
        assert (c2.in_channels, c2.out_channels) == (cin, cout) and isinstance(b2, nn.BatchNorm2d)
    assert (model.head.in_channels, model.head.out_channels, model.head.kernel_size) == (24, 3, (1, 1))
    # densify projections: 3x3 to the decoder width of each scale, 1x1 at the smallest (layer4)
    assert [(p.in_channels, p.out_channels, p.kernel_size[0]) for p in model.projs] == \
        [(256, 96, 3), (512, 192, 3), (1024, 384, 3), (2048, 768, 1)]
    # init: convs trunc-normal std 0.02 (bias 0), transposed convs Kaiming fan-out (std sqrt(2 / (cout*k*k)))
    w = model.decoder[0].conv[0].weight
    assert abs(w.std().item() - 0.02) < 0.002 and w.abs().max() <= 2.0
    assert (model.head.bias == 0).all()
    up = model.decoder[0].up.weight  # (cin, cout, 4, 4): fan-out = cin(out) * 16 in kaiming's convention for ConvT
    expected = (2.0 / (up.shape[0] * 16)) ** 0.5
    assert abs(up.std().item() - expected) / expected < 0.05
    # parameters: the paper's 25.6 M is the ResNet-50 alone (with its 1000-class fc, as timm counts it)
    counts = model.parameter_counts()
    assert round((counts["encoder"] + 2048 * 1000 + 1000) / 1e6, 1) == 25.6
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    light = SparK(build_backbone("resnet50"), image_size=64, decoder="light").parameter_counts()
    assert counts["decoder"] + counts["densify"] > 3 * (light["decoder"] + light["densify"])


def test_drop_path_rates_follow_timm_and_keep_sparsity():
    net = timm.create_model("resnet50", drop_path_rate=0.05, pretrained=False, num_classes=0)
    timm_rates = [float(b.drop_path.drop_prob) if b.drop_path is not None else 0.0
                  for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
    model = SparK(build_backbone("resnet50"), image_size=64, drop_path_rate=0.05, decoder_width=64)
    assert model.block_drop_rates == pytest.approx(timm_rates)
    assert model.block_drop_rates[0] == 0.0 and model.block_drop_rates[-1] == pytest.approx(0.05)

    x = torch.randn(64, 8, 2, 2)
    y = _drop_path(x, 0.25, torch.Generator().manual_seed(0))
    dropped = (y == 0).reshape(64, -1)
    assert (dropped.all(1) | ~dropped.any(1)).all()  # whole samples dropped
    kept = ~dropped.all(1)
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert 4 <= (~kept).sum() <= 28

    torch.manual_seed(0)
    small = SparK(build_backbone("resnet18"), image_size=64, drop_path_rate=0.5, decoder_width=64).train()
    mask = small.random_mask(4, generator=torch.Generator().manual_seed(1))
    xs = torch.randn(4, 3, 64, 64)
    f1 = small.sparse_features(xs, mask, torch.Generator().manual_seed(5))
    f2 = small.sparse_features(xs, mask, torch.Generator().manual_seed(5))
    f3 = small.sparse_features(xs, mask, torch.Generator().manual_seed(6))
    assert torch.equal(f1[-1], f2[-1]) and not torch.equal(f1[-1], f3[-1])
    vis = mask.repeat_interleave(1, 2).expand_as(f1[-1])
    assert (f1[-1][~vis] == 0).all()
    small.eval()  # no drop path in eval: the generator does not matter
    e1 = small.sparse_features(xs, mask, torch.Generator().manual_seed(5))[-1]
    e2 = small.sparse_features(xs, mask, torch.Generator().manual_seed(6))[-1]
    assert torch.equal(e1, e2)
