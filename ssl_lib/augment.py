"""Batched image augmentations on tensors (run where the batch lives: GPU when there is one).

The contrastive methods of the paper (BYOL, MoCo v2, SwAV; Wolf et al. 2023, Supplementary
Tables 4-6) and SparK (Table 7) use random resized crops, horizontal flips and Gaussian blur.
Here each is a small ``nn.Module`` with one job (MONAI-transform style) that augments a whole
batch ``(B, C, H, W)`` at once, with independent random parameters per sample and no per-sample
Python loop and no PIL:

- :class:`RandomResizedCrop`: one ``affine_grid`` + ``grid_sample`` for the whole batch;
- :class:`RandomHorizontalFlip`: ``torch.where`` between the batch and its mirror image;
- :class:`RandomGaussianBlur`: a separable, grouped (depthwise, one kernel per sample) conv.

Every transform takes an optional ``generator`` (a :class:`torch.Generator` on the batch's
device, or on the CPU); without one the global RNG is used. The same generator state gives
the same augmentation, so a run is reproducible step by step.

Inputs are float tensors (the normalised batch of :func:`ssl_lib.data.store.normalize_batch`,
grey repeated to 3 channels); outputs keep dtype and device.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "RandomGaussianBlur",
    "ViewTransform",
    "uniform",
]


def uniform(n: int, low: float, high: float, *, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` floats uniform in ``[low, high)`` on ``device``, drawn from ``generator`` (or the global RNG)."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=gen_device).to(device)
    return low + (high - low) * u


def _check_batch(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name} expects a float batch (B, C, H, W), got {x.dtype} {tuple(x.shape)}")


class RandomResizedCrop(nn.Module):
    """Crop a random box per sample and resize it to ``size x size`` (``mode``: bilinear or bicubic).

    The box covers a fraction of the image area drawn uniformly from ``scale`` and has an
    aspect ratio drawn log-uniformly from ``ratio`` (as torchvision's ``RandomResizedCrop``;
    box sides longer than the image are clipped to it instead of re-drawn). All boxes are
    sampled at once and applied with one ``affine_grid`` / ``grid_sample`` call.

    Shapes: ``(B, C, H, W)`` -> ``(B, C, size, size)``.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), mode: str = "bilinear"):
        super().__init__()
        if mode not in ("bilinear", "bicubic"):
            raise ValueError(f"crop interpolation must be 'bilinear' or 'bicubic', got {mode!r}")
        if size <= 0:
            raise ValueError(f"crop size must be positive, got {size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < min <= max, got {ratio}")
        self.size, self.scale, self.ratio, self.mode = int(size), tuple(scale), tuple(ratio), mode

    def boxes(self, batch_size: int, *, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random boxes ``(B, 4)``: centre x, centre y, width, height in [-1, 1] image coordinates."""
        area = uniform(batch_size, *self.scale, device=device, generator=generator)
        log_r = uniform(batch_size, math.log(self.ratio[0]), math.log(self.ratio[1]), device=device, generator=generator)
        r = log_r.exp()
        w = (area * r).sqrt().clamp(max=1.0)  # fraction of the image width
        h = (area / r).sqrt().clamp(max=1.0)
        cx = (1 - w) * uniform(batch_size, -1.0, 1.0, device=device, generator=generator)
        cy = (1 - h) * uniform(batch_size, -1.0, 1.0, device=device, generator=generator)
        return torch.stack([cx, cy, w, h], dim=1)

    def apply(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Resample each image of ``x`` inside its box of ``boxes`` (B, 4) to ``size x size``."""
        cx, cy, w, h = boxes.to(x.dtype).unbind(1)
        zero = torch.zeros_like(w)
        theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode=self.mode, padding_mode="border", align_corners=False)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        return self.apply(x, self.boxes(x.shape[0], device=x.device, generator=generator))

    def extra_repr(self) -> str:
        return (f"size={self.size}, scale={self.scale}, ratio={tuple(round(r, 3) for r in self.ratio)}, "
                f"mode={self.mode}")


class RandomHorizontalFlip(nn.Module):
    """Mirror each sample left-right with probability ``p``. Shapes: ``(B, C, H, W)`` -> same."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"flip probability must lie in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        flip = uniform(x.shape[0], 0.0, 1.0, device=x.device, generator=generator) < self.p
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class RandomGaussianBlur(nn.Module):
    """Gaussian blur with probability ``p`` and a per-sample ``sigma`` uniform in ``sigma`` (pixels).

    SimCLR/BYOL/MoCo v2 blur with sigma in [0.1, 2.0] and a kernel of about 10 % of the image
    side; ``kernel_size`` (odd) defaults to that. Implemented as two 1-D grouped convolutions
    (one kernel per sample and channel) with reflect padding; samples that are not blurred get
    the identity kernel. Each kernel sums to one, so the image mean is (up to the border)
    preserved. Shapes: ``(B, C, H, W)`` -> same.
    """

    def __init__(self, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0), kernel_size: int | None = None):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"blur probability must lie in [0, 1], got {p}")
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"blur sigma must satisfy 0 < min <= max, got {sigma}")
        if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
            raise ValueError(f"blur kernel_size must be odd and positive, got {kernel_size}")
        self.p, self.sigma, self.kernel_size = float(p), tuple(sigma), kernel_size

    def kernel_for(self, size: int) -> int:
        """Kernel side for images of side ``size``: ``kernel_size`` or the odd number nearest 10 %."""
        if self.kernel_size is not None:
            k = self.kernel_size
        else:
            k = max(3, int(round(0.1 * size)) // 2 * 2 + 1)
        return min(k, (size - 1) // 2 * 2 + 1)  # reflect padding needs k // 2 < size

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        B, C, H, W = x.shape
        sigma = uniform(B, *self.sigma, device=x.device, generator=generator)
        apply = uniform(B, 0.0, 1.0, device=x.device, generator=generator) < self.p
        if self.p == 0 or B == 0:
            return x
        k = self.kernel_for(min(H, W))
        if k == 1:
            return x
        offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
        kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None].to(x.dtype)) ** 2)
        kernel = kernel / kernel.sum(1, keepdim=True)
        identity = (offsets == 0).to(x.dtype).expand(B, k)
        kernel = torch.where(apply[:, None], kernel, identity)  # (B, k)
        weight = kernel.repeat_interleave(C, dim=0)[:, None]  # (B*C, 1, k)
        y = x.reshape(1, B * C, H, W)
        y = F.pad(y, (k // 2, k // 2, k // 2, k // 2), mode="reflect")
        y = F.conv2d(y, weight[:, :, None, :], groups=B * C)  # along W
        y = F.conv2d(y, weight[:, :, :, None], groups=B * C)  # along H
        return y.reshape(B, C, H, W)

    def extra_repr(self) -> str:
        return f"p={self.p}, sigma={self.sigma}, kernel_size={self.kernel_size or '10% of side'}"


class ViewTransform(nn.Module):
    """A chain of the transforms above, applied in order with one generator: one "view".

    ``ViewTransform(crop, flip, blur)(x, generator)`` gives one augmented view of the batch.
    """

    def __init__(self, *transforms: nn.Module):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, generator)
        return x

    @classmethod
    def standard(cls, size: int, scale: Sequence[float], *, flip_p: float = 0.5, blur_p: float = 0.0,
                 sigma: tuple[float, float] = (0.1, 2.0), ratio=(3 / 4, 4 / 3),
                 interpolation: str = "bilinear") -> "ViewTransform":
        """Crop (resized with ``interpolation``) -> flip (if ``flip_p > 0``) -> blur (if ``blur_p > 0``)."""
        parts: list[nn.Module] = [RandomResizedCrop(size, tuple(scale), tuple(ratio), mode=interpolation)]
        if flip_p > 0:
            parts.append(RandomHorizontalFlip(flip_p))
        if blur_p > 0:
            parts.append(RandomGaussianBlur(blur_p, sigma))
        return cls(*parts)
