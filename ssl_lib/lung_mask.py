"""A lung mask from the windowed CT slice alone: where the paper's claim about heat maps is measured.

Wolf et al. 2023 (Results, Figure 4) say of their Grad-CAM maps that "the majority of focus points
are located in the lung". To measure that, the Grad-CAM step needs the lung of every explained
slice. Neither the COVID-CT slices nor the study's stores carry one (the stores keep only the
lesion mask), so it is derived from the image: the lungs are the large dark regions enclosed by
the body.

:func:`lung_masks`, per slice (uint8 ``(H, W)``, the windowed grey values the models see):

1. threshold: Otsu's threshold of the slice's grey-value histogram (or a given one) separates
   air and lung (dark) from soft tissue and bone (bright);
2. body: the largest connected bright component (4-connectivity), holes filled; it must cover at
   least ``min_body`` of the image (noise or a blank slice has no such component: no lung);
3. lung candidates: the dark pixels inside the filled body (air enclosed by the body), so the
   air around the patient, which reaches the image border, never counts;
4. lungs: the candidate components of at least ``min_share`` of the body's area (the trachea,
   bowel gas and noise are smaller), closed with a disc of ``close_px`` pixels (vessels and
   airway walls at the lung edge) and holes filled (vessels and nodules inside the lung).

A slice without a body (blank, or noise without a large enclosing component) gets an empty
mask; so does a lung cut open by the image border (it is not enclosed by the body). Dense
lesions at the lung's edge (consolidation, strong ground glass touching the chest wall) are as
bright as the wall and fall outside the mask: :func:`with_lesions` adds a known lesion mask
(lesions of the COVID-19 task lie in the lung by definition). Measured on the synthetic phantom
(:mod:`ssl_lib.data.phantom`, which knows its lung) in ``tests/test_lung_mask.py``.

scikit-image is not a dependency of the study, so the morphology is :mod:`scipy.ndimage`.
Shapes: images uint8 ``(N, H, W)``; masks bool ``(N, H, W)``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["LUNG_MASK_VERSION", "lung_mask", "lung_masks", "otsu_threshold", "with_lesions"]

#: Changes whenever the algorithm does (heat-map caches record it and are recomputed).
LUNG_MASK_VERSION = 1


def otsu_threshold(image: np.ndarray) -> float:
    """Otsu's threshold of a uint8 image's 256-bin histogram: the grey value ``t`` that maximises
    the between-class variance of ``< t`` and ``>= t``; NaN for a constant image."""
    hist = np.bincount(np.asarray(image, np.uint8).ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0 or np.count_nonzero(hist) < 2:
        return float("nan")
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)[:-1]  # pixels below t = 1 .. 255
    s0 = np.cumsum(hist * levels)[:-1]
    w1 = total - w0
    mean0 = np.divide(s0, w0, out=np.zeros_like(s0), where=w0 > 0)
    mean1 = np.divide(s0[-1] + hist[-1] * 255 - s0, w1, out=np.zeros_like(s0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(np.argmax(between) + 1)


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy * yy + xx * xx <= radius * radius


def lung_mask(image: np.ndarray, *, threshold: float | None = None, min_share: float = 0.02,
              min_body: float = 0.15, close_px: int | None = None) -> np.ndarray:
    """The lungs of one windowed slice, bool ``(H, W)`` (see the module docstring).

    ``threshold``: grey value below which a pixel is air or lung (None: Otsu's); ``min_share``:
    smallest lung component as a share of the body's area; ``min_body``: smallest body as a share
    of the image (uniform noise's largest bright component covers under a tenth of it);
    ``close_px``: radius of the closing disc (None: 3 % of the shorter side, at least 1 px).
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"lung_mask: expected one (H, W) slice, got shape {img.shape}")
    empty = np.zeros(img.shape, bool)
    t = otsu_threshold(img) if threshold is None else float(threshold)
    if not np.isfinite(t):
        return empty
    bright = img >= t
    labels, n = ndi.label(bright)
    if n == 0:
        return empty
    sizes = np.bincount(labels.ravel())[1:]
    body = ndi.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    if body.mean() < min_body:
        return empty
    cavity = body & ~bright
    labels, n = ndi.label(cavity)
    if n == 0:
        return empty
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_share * body.sum()) + 1
    if len(keep) == 0:
        return empty
    lungs = np.isin(labels, keep)
    r = max(1, round(0.03 * min(img.shape))) if close_px is None else int(close_px)
    if r > 0:
        pad = r + 1  # closing near the border must not shrink the mask there
        lungs = ndi.binary_closing(np.pad(lungs, pad), structure=_disc(r))[pad:-pad, pad:-pad]
    return ndi.binary_fill_holes(lungs) & body


def lung_masks(images: np.ndarray, **kwargs) -> np.ndarray:
    """:func:`lung_mask` of every slice of uint8 ``(N, H, W)`` -> bool ``(N, H, W)``."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"lung_masks: expected slices (N, H, W), got shape {images.shape}")
    out = np.zeros(images.shape, bool)
    for i in range(len(images)):
        out[i] = lung_mask(images[i], **kwargs)
    return out


def with_lesions(lungs: np.ndarray, lesions: np.ndarray | None) -> np.ndarray:
    """The lung masks with the lesion masks added where given (a lesion of a lung task lies in the
    lung, however bright it is): bool ``(N, H, W)``."""
    lungs = np.asarray(lungs, bool)
    return lungs if lesions is None else lungs | (np.asarray(lesions) > 0)
