"""The authors' fine-tuning augmentation (MONAI's and our batched one), and BatchNorm training as Lightning's
BackboneFinetuning."""

import math

import pytest
import torch
from monai.transforms import Flip, Rotate

import ssl_lib.finetune as ft
from ssl_lib.finetune_augment import FlipRotate, FlipRotateParams, MonaiAugment
from ssl_lib.models.classifier import Classifier

PROFILE = ft.get_profile("smoke", batch_size=16)


def _batch(n=8, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def test_a_seed_gives_the_same_batch():
    x = _batch()
    a1, a2, b = MonaiAugment(seed=3), MonaiAugment(seed=3), MonaiAugment(seed=4)
    first, again, other = a1(x), a2(x), b(x)
    assert first.shape == x.shape and first.dtype == x.dtype and first.device == x.device
    assert type(first) is torch.Tensor  # a plain tensor, not MONAI's MetaTensor
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(a1(x), first)  # the generator moves on: the next batch differs


def _seeded(kind, seed, **kw):
    """``kind`` ("monai": MONAI per slice, "batched": ours) as a callable ``x -> augmented x`` seeded with ``seed``."""
    if kind == "monai":
        return MonaiAugment(seed=seed, **kw)
    aug, gen = FlipRotate(**kw), torch.Generator().manual_seed(seed)
    return lambda x: aug(x, gen)


@pytest.mark.parametrize("kind", ["monai", "batched"])
def test_flip_is_monais_randflip_over_both_spatial_axes(kind):
    x = _batch(n=32)
    out = _seeded(kind, 0, rotate=False)(x)
    same = [(o == i).all().item() for o, i in zip(out, x)]
    flipped = [(o == i.flip(-1, -2)).all().item() for o, i in zip(out, x)]
    assert all(s or f for s, f in zip(same, flipped))
    assert 4 <= sum(flipped) <= 28 and 4 <= sum(same) <= 28  # about half


@pytest.mark.parametrize("kind", ["monai", "batched"])
def test_rotation_stays_within_15_degrees_and_keeps_size(kind):
    size = 41
    x = torch.zeros(16, 1, size, size)
    x[:, :, 20, 34] = 1.0  # a dot 14 px right of the centre (angle 0)
    out = _seeded(kind, 1, flip_prob=0.0, rotate_prob=1.0)(x)
    assert out.shape == x.shape
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    angles = []
    for o in out[:, 0]:
        w = o.clamp(min=0)
        cy, cx = (w * yy).sum() / w.sum() - 20, (w * xx).sum() / w.sum() - 20
        angles.append(math.degrees(math.atan2(cy.item(), cx.item())))
    assert all(abs(a) <= 15.5 for a in angles) and max(abs(a) for a in angles) > 3  # rotated, within +-15 deg
    const = _seeded(kind, 2, flip_prob=0.0, rotate_prob=1.0)(torch.full((2, 3, 16, 16), 0.7))
    torch.testing.assert_close(const, torch.full_like(const, 0.7))  # border padding: nothing black enters


def test_bad_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="float batch"):
        MonaiAugment()(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="float batch"):
        FlipRotate()(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="rotate_prob"):
        FlipRotate(rotate_prob=1.5)


# ----------------------------------------------------------------------------- the batched path against MONAI's
def _params(flip, rotate, angle):
    return FlipRotateParams(torch.tensor(flip), torch.tensor(rotate), torch.tensor(angle, dtype=torch.float32))


def test_forced_flip_without_rotation_equals_monai_exactly():
    x = _batch(n=6, size=20)
    ours = FlipRotate().apply(x, _params([True] * 6, [False] * 6, [0.1] * 6))
    monai = torch.stack([Flip(spatial_axis=None)(s).as_tensor() for s in x])
    assert torch.equal(ours, monai)
    assert torch.equal(ours, MonaiAugment(seed=0, flip_prob=1.0, rotate_prob=0.0)(x))
    untouched = FlipRotate().apply(x, _params([False] * 6, [False] * 6, [0.2] * 6))
    assert torch.equal(untouched, x)  # no flip, no rotation: not resampled at all, as MONAI


@pytest.mark.parametrize("size", [(24, 24), (20, 28)])
def test_rotation_by_a_known_angle_matches_monais_rotate(size):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, *size, generator=g)
    angles = [0.0, 0.1, -0.2, math.pi / 12, -math.pi / 12]
    flips = [False, True, False, True, False]
    ours = FlipRotate().apply(x, _params(flips, [True] * 5, angles))
    for o, image, a, f in zip(ours, x, angles, flips):
        ref = Rotate(angle=a, keep_size=True)(Flip(spatial_axis=None)(image) if f else image).as_tensor()
        torch.testing.assert_close(o, ref, atol=2e-5, rtol=0)  # the same resampling, float32 rounding apart
    torch.testing.assert_close(ours[0], x[0], atol=1e-5, rtol=0)  # rotated by 0: the identity
    # a real rotation, in MONAI's sense: a dot right of the centre moves to where MONAI moves it
    dot = torch.zeros(1, 1, 41, 41)
    dot[..., 20, 34] = 1.0
    turned = FlipRotate().apply(dot, _params([False], [True], [0.25]))[0]
    torch.testing.assert_close(turned, Rotate(angle=0.25, keep_size=True)(dot[0]).as_tensor(), atol=1e-5, rtol=0)
    assert turned.argmax() != dot[0].argmax()


def test_per_sample_parameters_vary_and_repeat_with_the_seed():
    aug = FlipRotate()

    def draw(seed, n=256):
        return aug.sample(n, device="cpu", generator=torch.Generator().manual_seed(seed))

    a, again, other = draw(7), draw(7), draw(8)
    for name in ("flip", "rotate", "angle"):
        assert torch.equal(getattr(a, name), getattr(again, name)), name
    assert not torch.equal(a.angle, other.angle) and not torch.equal(a.flip, other.flip)
    assert 0.35 < a.flip.float().mean() < 0.65 and 0.35 < a.rotate.float().mean() < 0.65
    assert a.angle.abs().max() <= math.pi / 12 and a.angle.min() < -0.2 and a.angle.max() > 0.2
    assert len(set(a.angle.tolist())) == 256  # one angle per sample
    assert not aug.sample(4, device="cpu", generator=torch.Generator().manual_seed(0)).flip.dtype.is_floating_point
    assert not FlipRotate(rotate=False).sample(64, device="cpu").rotate.any()


def test_batched_augmentation_is_the_monai_one_per_slice_given_the_same_draws():
    x = _batch(n=16, size=16)
    aug = FlipRotate()
    params = aug.sample(16, device="cpu", generator=torch.Generator().manual_seed(3))
    ours = aug.apply(x, params)
    for o, image, f, r, a in zip(ours, x, params.flip, params.rotate, params.angle):
        ref = Flip(spatial_axis=None)(image).as_tensor() if f else image
        if r:
            ref = Rotate(angle=float(a), keep_size=True)(ref).as_tensor()
            torch.testing.assert_close(o, ref, atol=2e-5, rtol=0)
        else:
            assert torch.equal(o, ref)


def _tensors(n=24, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (n, 1, size, size), dtype=torch.uint8, generator=g), torch.arange(n) % 2


def test_paper_profile_uses_monai_and_lightning_bn():
    paper = ft.get_profile("paper")
    assert paper.augment == "monai" and paper.train_bn_frozen and not paper.cached_features
    assert ft.get_profile("quick").augment == "flip" and ft.get_profile("quick").cached_features


def test_bn_trains_while_the_backbone_is_frozen_as_backbone_finetuning():
    x, y = _tensors()
    torch.manual_seed(0)
    model = Classifier("resnet18", 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prof = ft.get_profile(PROFILE, linear_epochs=1, full_epochs=0, augment="monai", train_bn_frozen=True)
    ft.fit(model, x, y, x[:8], y[:8], prof, mean=0.5, std=0.25)
    after = model.state_dict()
    convs = [k for k in before if k.startswith("backbone.") and "conv" in k and k.endswith("weight")]
    bns = [k for k in before if k.startswith("backbone.") and ".bn" in k or k.startswith("backbone.bn")]
    assert convs and bns
    for k in convs:
        assert torch.equal(before[k], after[k]), k  # frozen
    for k in ("backbone.bn1.weight", "backbone.bn1.bias", "backbone.bn1.running_mean", "backbone.layer4.1.bn2.weight"):
        assert not torch.equal(before[k], after[k]), k  # BN layers train (mode and parameters)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert all(p.requires_grad for p in model.parameters())

    torch.manual_seed(0)
    plain = Classifier("resnet18", 2)
    ref = {k: v.clone() for k, v in plain.state_dict().items()}
    ft.fit(plain, x, y, x[:8], y[:8], ft.get_profile(prof, train_bn_frozen=False), mean=0.5, std=0.25)
    for k, v in plain.state_dict().items():  # eval-mode frozen backbone: BN untouched, augmentation or not
        if k.startswith("backbone."):
            assert torch.equal(ref[k], v), k


def test_monai_fit_is_reproducible_and_differs_from_flip():
    x, y = _tensors()
    prof = ft.get_profile(PROFILE, linear_epochs=1, full_epochs=1, augment="monai", train_bn_frozen=True)
    runs = []
    for augment in ("monai", "monai", "flip"):
        torch.manual_seed(0)
        model = Classifier("resnet18", 2)
        res = ft.fit(model, x, y, x[:8], y[:8], ft.get_profile(prof, augment=augment), mean=0.5, std=0.25, seed=5)
        runs.append(res.curves["train_loss"].tolist())
    assert runs[0] == runs[1] and runs[0] != runs[2]
    with pytest.raises(ValueError, match="augmentation"):
        ft.fit(Classifier("resnet18", 2), x, y, x[:8], y[:8], ft.get_profile(prof, augment="rotate"),
               mean=0.5, std=0.25)


def test_gathered_and_whole_batch_ways_are_bit_equal_and_the_grid_is_affine_grids():
    x = _batch(n=32, size=20)
    aug = FlipRotate()
    params = aug.sample(32, device="cpu", generator=torch.Generator().manual_seed(5))
    assert torch.equal(aug.apply(x, params, select=True), aug.apply(x, params, select=False))
    flip_only = FlipRotate(rotate=False)
    assert torch.equal(flip_only.apply(x, params, select=True), flip_only.apply(x, params, select=False))
    from ssl_lib.finetune_augment import rotation_grid, rotation_theta
    import torch.nn.functional as F

    angle = params.angle
    for h, w in ((20, 20), (12, 30)):
        ref = F.affine_grid(rotation_theta(angle, h, w), [32, 1, h, w], align_corners=False)
        torch.testing.assert_close(rotation_grid(angle, h, w), ref, atol=1e-6, rtol=0)
