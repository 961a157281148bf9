"""Fine-tuning augmentation of Wolf et al. 2023's downstream code, with MONAI, on the batch's device.

The authors' downstream notebooks (COVID-19, Brain) augment each training image with MONAI's
``RandFlip(prob=0.5)`` and ``RandRotate(range_x=pi/12, prob=0.5, keep_size=True)``: a flip over
the spatial axes (``spatial_axis=None``: both, on a channel-first slice) half of the time and a
rotation by an angle drawn uniformly from +-15 degrees about the slice centre half of the time
(bilinear, border padding, same size). :class:`MonaiAugment` applies exactly these MONAI array
transforms to every slice of a float batch ``(B, C, H, W)`` where the batch lives (GPU or CPU):
MONAI's random array transforms draw one set of parameters per call and have no batched form, so
the slices go through them one by one on the device (measured in ``benchmarks/finetune_augment.py``:
a small part of a fine-tuning step).

Random numbers come from the transforms' own ``numpy`` generators, seeded once per run
(``seed``): the same seed gives the same sequence of augmented batches.

Shapes: ``(B, C, H, W)`` float -> ``(B, C, H, W)`` float, same device and dtype.
"""

from __future__ import annotations

import math

import torch
from monai.data import MetaTensor
from monai.transforms import RandFlip, RandRotate

#: fine-tuning augmentations: none; a horizontal flip (our batched fast path, mirror features
#: cached for the linear phase); the authors' MONAI flip + rotation (per batch, on the device).
AUGMENTS = ("none", "flip", "monai")


class MonaiAugment:
    """MONAI ``RandFlip(prob=0.5)`` then ``RandRotate(range_x=pi/12, prob=0.5, keep_size=True)`` per slice.

    ``rotate=False`` keeps the flip only. ``seed`` seeds both transforms' generators.
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

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"MonaiAugment expects a float batch (B, C, H, W), got {x.dtype} {tuple(x.shape)}")
        out = torch.stack([self.one(image) for image in x])
        return out.to(dtype=x.dtype, memory_format=torch.channels_last if x.is_contiguous(
            memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format)
