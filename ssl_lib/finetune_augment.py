"""Fine-tuning augmentation of Wolf et al. 2023's downstream code: MONAI's flip + rotation, batched on the device.

The authors' downstream notebooks (COVID-19, Brain) augment each training image with MONAI's
``RandFlip(prob=0.5)`` and ``RandRotate(range_x=pi/12, prob=0.5, keep_size=True)``: with
``spatial_axis=None`` the flip reverses *both* spatial axes of a channel-first slice (a 180 degree
turn, not a mirror image) half of the time, and half of the time the slice is rotated about its
centre by an angle drawn uniformly from [-15, 15] degrees, resampled with MONAI's defaults:
bilinear interpolation, ``border`` padding, ``align_corners=False``, float32, same size.

Two implementations of exactly that:

- :class:`FlipRotate` (what fine-tuning uses, ``augment="monai"``): the whole batch at once on its
  device, with per-sample parameters (flip yes/no, rotate yes/no, angle) drawn from a seeded
  :class:`torch.Generator`: the flip reverses the slices that drew it (bit-exact as MONAI's
  ``Flip``), the rotation is one ``grid_sample`` for the batch with the very resampling MONAI's
  ``Rotate`` runs per slice (the same normalised affine, bilinear, border,
  ``align_corners=False``; ``tests/test_finetune_augment.py`` checks it against MONAI at known
  angles to float32 rounding); slices drawn "not rotated" are passed through untouched, as MONAI
  does. No host-device copy, no host-device sync and no Python loop over the batch.
- :class:`MonaiAugment`: the MONAI array transforms themselves, one slice at a time (MONAI's
  random transforms draw one set of parameters per call and have no batched form, and each
  rotated slice copies its affine from the host to the device). Kept as the reference the batched
  path is tested and timed against (``benchmarks/finetune_augment.py``).

The random streams differ (a torch generator against MONAI's numpy ``RandomState``), so the two
draw different but identically distributed augmentations; each repeats exactly for a seed.

Shapes: ``(B, C, H, W)`` float -> ``(B, C, H, W)`` float, same device and dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import RandFlip, RandRotate
from torch import nn

from .augment import uniform

#: fine-tuning augmentations: none; a horizontal flip (our batched fast path, mirror features
#: cached for the linear phase); the authors' MONAI flip + rotation (:class:`FlipRotate`, batched).
AUGMENTS = ("none", "flip", "monai")


def _check_batch(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name} expects a float batch (B, C, H, W), got {x.dtype} {tuple(x.shape)}")


@dataclass(frozen=True)
class FlipRotateParams:
    """Per-sample draws of :class:`FlipRotate` for a batch of ``B``: ``flip`` and ``rotate`` bool
    ``(B,)``, ``angle`` float ``(B,)`` in radians (drawn for every sample, used where ``rotate``)."""

    flip: torch.Tensor
    rotate: torch.Tensor
    angle: torch.Tensor


def rotation_theta(angle: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``affine_grid`` matrices ``(B, 2, 3)`` that rotate ``(H, W)`` slices by ``angle`` ``(B,)`` about their centre.

    The matrix MONAI's ``Rotate`` builds per slice (``create_rotate`` between shifts to the pixel
    centre ``(size - 1) / 2``, normalised by ``to_norm_affine`` with ``align_corners=False``, index
    order reversed for ``grid_sample``), in closed form: ``[[c, s H/W, 0], [-s W/H, c, 0]]``.
    """
    c, s = angle.cos(), angle.sin()
    zero = torch.zeros_like(c)
    return torch.stack([torch.stack([c, s * (height / width), zero], 1),
                        torch.stack([-s * (width / height), c, zero], 1)], 1)


def rotation_grid(angle: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(rotation_theta(angle, H, W), (B, C, H, W), align_corners=False)`` ``(B, H, W, 2)``, faster.

    The grid of a rotation is two products of the pixel-centre coordinates ``(2i + 1) / size - 1``
    (affine_grid's base grid) with the matrix entries; computed so it costs a tenth of
    ``affine_grid`` on the CPU (equal to it up to float rounding).
    """
    theta = rotation_theta(angle, height, width)
    kw = dict(device=angle.device, dtype=angle.dtype)
    xs = ((torch.arange(width, **kw) * 2 + 1) / width - 1)[None, None, :]
    ys = ((torch.arange(height, **kw) * 2 + 1) / height - 1)[None, :, None]
    grid = torch.empty(angle.shape[0], height, width, 2, **kw)
    t = theta[:, :, :2, None, None]  # (B, 2, 2, 1, 1)
    torch.addcmul(t[:, 0, 1] * ys, t[:, 0, 0], xs, out=grid[..., 0])
    torch.addcmul(t[:, 1, 1] * ys, t[:, 1, 0], xs, out=grid[..., 1])
    return grid


def _rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` rotated by ``angle`` ``(B,)`` as MONAI's ``Rotate``: bilinear, border, not corner-aligned."""
    grid = rotation_grid(angle.to(x.dtype), *x.shape[-2:])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FlipRotate(nn.Module):
    """MONAI ``RandFlip(prob=0.5)`` then ``RandRotate(range_x=pi/12, prob=0.5, keep_size=True)``, batched.

    ``flip_prob``/``rotate_prob``: per-sample probabilities; ``max_angle``: the angle is uniform
    in ``[-max_angle, max_angle]`` (radians); ``rotate=False`` keeps the flip only. Random draws:
    :meth:`sample` (three uniform draws per sample, always, so the generator's stream does not
    depend on the outcomes); :meth:`apply` is deterministic. Shapes: ``(B, C, H, W)`` -> same.
    """

    def __init__(self, *, rotate: bool = True, flip_prob: float = 0.5, rotate_prob: float = 0.5,
                 max_angle: float = math.pi / 12):
        super().__init__()
        for name, p in (("flip_prob", flip_prob), ("rotate_prob", rotate_prob)):
            if not 0 <= p <= 1:
                raise ValueError(f"FlipRotate: {name} must lie in [0, 1], got {p}")
        if max_angle < 0:
            raise ValueError(f"FlipRotate: max_angle must be >= 0 radians, got {max_angle}")
        self.rotate, self.flip_prob, self.rotate_prob, self.max_angle = bool(rotate), float(flip_prob), \
            float(rotate_prob), float(max_angle)

    def sample(self, batch_size: int, *, device, generator: torch.Generator | None = None) -> FlipRotateParams:
        """The per-sample parameters of a batch, drawn on ``device`` from ``generator`` (or the global RNG)."""
        flip = uniform(batch_size, 0.0, 1.0, device=device, generator=generator) < self.flip_prob
        rotate = uniform(batch_size, 0.0, 1.0, device=device, generator=generator) < self.rotate_prob
        angle = uniform(batch_size, -self.max_angle, self.max_angle, device=device, generator=generator)
        return FlipRotateParams(flip, rotate & self.rotate, angle)

    def apply(self, x: torch.Tensor, params: FlipRotateParams, *, select: bool | None = None) -> torch.Tensor:
        """``x`` flipped over both spatial axes where ``params.flip``, then rotated where ``params.rotate``.

        Two equal ways (tested bit-equal): on a GPU the whole batch is flipped and resampled and
        ``torch.where`` keeps what each sample drew (no host-device sync: the selected samples'
        number is never read); on the CPU (``select``, default: ``x`` on the CPU) only the samples
        that drew a flip or a rotation are gathered and transformed, half the work.
        """
        _check_batch(x, type(self).__name__)
        rotate = params.rotate if self.rotate else torch.zeros_like(params.rotate)
        if select if select is not None else x.device.type == "cpu":
            out = x.clone()
            flip = params.flip.nonzero().squeeze(1)
            out[flip] = x[flip].flip(-2, -1)
            turn = rotate.nonzero().squeeze(1)
            if len(turn):
                out[turn] = _rotate(out[turn], params.angle[turn])
            return out
        out = torch.where(params.flip[:, None, None, None], x.flip(-2, -1), x)
        if not self.rotate:
            return out
        return torch.where(rotate[:, None, None, None], _rotate(out, params.angle), out)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        return self.apply(x, self.sample(x.shape[0], device=x.device, generator=generator))

    def extra_repr(self) -> str:
        return (f"flip_prob={self.flip_prob}, rotate_prob={self.rotate_prob if self.rotate else 0.0}, "
                f"max_angle={self.max_angle:.4f}")


class MonaiAugment:
    """MONAI ``RandFlip(prob=0.5)`` then ``RandRotate(range_x=pi/12, prob=0.5, keep_size=True)`` per slice.

    The reference for :class:`FlipRotate` (same arguments). ``seed`` seeds both transforms' numpy
    generators: the same seed gives the same sequence of augmented batches.
    """

    def __init__(self, seed: int = 0, *, rotate: bool = True, flip_prob: float = 0.5, rotate_prob: float = 0.5,
                 max_angle: float = math.pi / 12):
        self.flip = RandFlip(prob=flip_prob)
        self.rotate = RandRotate(range_x=max_angle, prob=rotate_prob, keep_size=True) if rotate else None
        self.flip.set_random_state(seed=int(seed) % 2**32)
        if self.rotate is not None:
            self.rotate.set_random_state(seed=(int(seed) + 1_000_003) % 2**32)

    def one(self, image: torch.Tensor) -> torch.Tensor:
        """One channel-first slice ``(C, H, W)`` through the MONAI transforms (a plain tensor back)."""
        out = self.flip(image)
        if self.rotate is not None:
            out = self.rotate(out)
        return out.as_tensor() if isinstance(out, MetaTensor) else torch.as_tensor(out)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The batch ``x``, slice by slice (``generator`` is not used: MONAI draws from its own)."""
        _check_batch(x, type(self).__name__)
        out = torch.stack([self.one(image) for image in x])
        return out.to(dtype=x.dtype, memory_format=torch.channels_last if x.is_contiguous(
            memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format)
