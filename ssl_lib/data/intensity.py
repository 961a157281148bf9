"""Intensity handling of CT slices: stored values -> Hounsfield units -> 8-bit grey.

Two mappings, as in Wolf et al. 2023 (Methods, "Dataset Preprocessing" and "Brain"):

* :func:`interval_map` maps a fixed HU interval linearly onto 0..255 without windowing; the paper
  uses -1024..3071 HU for pre-training so that no tissue is favoured.
* :func:`window` applies a radiological window (centre/width, e.g. brain 35/80 HU) and maps it
  onto 0..255.

Both clip outside their interval and return ``uint8`` arrays of the input's shape.
"""

from __future__ import annotations

import numpy as np

#: The paper's pre-training interval (HU), mapped onto 0..255.
PAPER_HU_RANGE = (-1024.0, 3071.0)
#: Brain window (centre, width) of the paper's Brain task.
BRAIN_WINDOW = (35.0, 80.0)


def to_hu(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored pixel values (any integer dtype, shape ``(H, W)``) -> HU as ``float32``.

    ``HU = stored * RescaleSlope + RescaleIntercept`` (DICOM PS3.3 C.11.1.1.2).
    """
    return stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def interval_map(hu: np.ndarray, low: float = PAPER_HU_RANGE[0], high: float = PAPER_HU_RANGE[1]) -> np.ndarray:
    """Map ``[low, high]`` HU linearly onto ``[0, 255]`` (clipped, rounded) -> ``uint8``."""
    if not high > low:
        raise ValueError(f"interval needs high > low, got [{low}, {high}]")
    scaled = (np.asarray(hu, dtype=np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def window(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Radiological window ``centre ± width/2`` mapped onto ``[0, 255]`` -> ``uint8``."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return interval_map(hu, centre - width / 2.0, centre + width / 2.0)


_window = window  # hu_to_uint8's argument ``window`` hides the function


def hu_to_uint8(hu: np.ndarray, *, window: tuple[float, float] | None = None,
                hu_range: tuple[float, float] = PAPER_HU_RANGE) -> np.ndarray:
    """HU -> uint8: radiological ``window=(centre, width)``, or interval mapping of ``hu_range``."""
    if window is not None:
        return _window(hu, float(window[0]), float(window[1]))
    return interval_map(hu, float(hu_range[0]), float(hu_range[1]))


def to_grey(pixels: np.ndarray) -> np.ndarray:
    """Any decoded image (``(H, W)``, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, uint8/uint16) -> ``uint8 (H, W)``.

    Colour images are converted with ITU-R 601 luma weights (as PIL's ``convert("L")``); alpha is
    dropped; 16-bit images are scaled to 8 bit.
    """
    arr = np.asarray(pixels)
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[..., :3]
        if arr.shape[2] == 3:
            arr = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        elif arr.shape[2] == 1:
            arr = arr[..., 0]
        else:
            raise ValueError(f"unsupported channel count {arr.shape[2]}")
    elif arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    if arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and arr.max(initial=0) > 255):
        arr = arr.astype(np.float32) * (255.0 / 65535.0)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)

