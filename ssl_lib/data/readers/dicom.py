"""Shared DICOM decoding for the readers: header checks, slice order, stored values -> HU -> uint8.

Every function that touches a file raises :class:`~ssl_lib.data.readers.BadSource` (a
:class:`~ssl_lib.data.store.StoreError`) naming the file and the problem, with pydicom's own
exception chained. Nothing here returns or logs a header value that could identify a patient
except :func:`patient_id`, whose result readers only hand to the store (which hashes it).

HU conversion follows DICOM PS3.3 C.11.1.1.2 (``HU = stored * RescaleSlope + RescaleIntercept``)
via :func:`ssl_lib.data.intensity.to_hu`; the 8-bit mapping is either the paper's interval
mapping (-1024..3071 HU -> 0..255, :func:`~ssl_lib.data.intensity.interval_map`) or a
radiological window (:func:`~ssl_lib.data.intensity.window`).
"""

from __future__ import annotations

import os

import numpy as np

from ssl_lib.data.intensity import PAPER_HU_RANGE, interval_map, to_hu, window as apply_window
from ssl_lib.data.readers import BadSource

def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM Part 10 ``DICM`` marker at byte 128."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dicom(path: str | os.PathLike, *, pixels: bool = True):
    """Read one DICOM Part 10 file (``pixels=False``: header only) -> ``pydicom.Dataset``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except FileNotFoundError as exc:
        raise BadSource(path, "file not found") from exc
    except InvalidDicomError as exc:
        raise BadSource(path, "not a DICOM file", type(exc).__name__) from exc
    except Exception as exc:  # truncated or garbled files raise assorted errors deep in pydicom
        raise BadSource(path, "corrupt DICOM file", type(exc).__name__) from exc


def modality(ds) -> str:
    """The Modality header (``""`` if absent), upper case."""
    return str(getattr(ds, "Modality", "") or "").strip().upper()


def patient_id(ds) -> str | None:
    """The PatientID header, or ``None`` when absent/empty. Only ever hand it to the store (it hashes it)."""
    value = str(getattr(ds, "PatientID", "") or "").strip()
    return value or None


def rescale(ds, path: str | os.PathLike) -> tuple[float, float]:
    """``(RescaleSlope, RescaleIntercept)``; missing or non-numeric tags are a :class:`BadSource`."""
    missing = [tag for tag in ("RescaleSlope", "RescaleIntercept") if getattr(ds, tag, None) in (None, "")]
    if missing:
        raise BadSource(path, f"missing {' and '.join(missing)}: cannot convert to Hounsfield units")
    try:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    except (TypeError, ValueError) as exc:
        raise BadSource(path, "RescaleSlope/RescaleIntercept are not numbers") from exc
    if not np.isfinite(slope) or not np.isfinite(intercept) or slope == 0:
        raise BadSource(path, "RescaleSlope/RescaleIntercept are not usable (zero or not finite)")
    return slope, intercept


def slice_position(ds) -> float | None:
    """Position of the slice along the stack's normal (mm), ``None`` without ImagePositionPatient.

    With ImageOrientationPatient the position is projected on the slice normal
    (row x column direction), which is the ImagePositionPatient z for axial slices; without it,
    the plain z.
    """
    ipp = getattr(ds, "ImagePositionPatient", None)
    try:
        pos = np.asarray([float(v) for v in ipp], dtype=np.float64) if ipp is not None else None
    except (TypeError, ValueError):
        return None
    if pos is None or pos.shape != (3,):
        return None
    iop = getattr(ds, "ImageOrientationPatient", None)
    try:
        o = np.asarray([float(v) for v in iop], dtype=np.float64) if iop is not None else None
    except (TypeError, ValueError):
        o = None
    if o is not None and o.shape == (6,):
        normal = np.cross(o[:3], o[3:])
        if np.linalg.norm(normal) > 0.5:
            return float(pos @ normal)
    return float(pos[2])


def instance_number(ds) -> int | None:
    value = getattr(ds, "InstanceNumber", None)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def sort_slices(items: list[tuple[object, object]]) -> list[tuple[object, object]]:
    """Sort ``(key, dataset)`` pairs by slice position; InstanceNumber where any position is missing.

    Ties and missing values fall back to the order given (callers pass them sorted by file name).
    """
    positions = [slice_position(ds) for _, ds in items]
    if all(p is not None for p in positions):
        order = sorted(range(len(items)), key=lambda i: (positions[i], instance_number(items[i][1]) or 0, i))
    else:
        numbers = [instance_number(ds) for _, ds in items]
        order = sorted(range(len(items)), key=lambda i: (numbers[i] is None, numbers[i] or 0, i))
    return [items[i] for i in order]


def decode_hu(ds, path: str | os.PathLike) -> np.ndarray:
    """Pixel data -> HU, float32 ``(H, W)``; needs the rescale tags and a single frame."""
    slope, intercept = rescale(ds, path)
    if "PixelData" not in ds:
        raise BadSource(path, "no pixel data")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # unsupported transfer syntax, truncated pixel data, ...
        raise BadSource(path, "pixel data could not be decoded", type(exc).__name__) from exc
    if stored.ndim != 2:
        raise BadSource(path, f"expected one grey frame, got pixel array of shape {stored.shape}")
    return to_hu(stored, slope, intercept)


def hu_to_uint8(hu: np.ndarray, *, window: tuple[float, float] | None = None,
                hu_range: tuple[float, float] = PAPER_HU_RANGE) -> np.ndarray:
    """HU -> uint8: radiological ``window=(centre, width)``, or interval mapping of ``hu_range``."""
    if window is not None:
        return apply_window(hu, float(window[0]), float(window[1]))
    return interval_map(hu, float(hu_range[0]), float(hu_range[1]))


def read_ct_slice(path: str | os.PathLike, *, window: tuple[float, float] | None = None,
                  hu_range: tuple[float, float] = PAPER_HU_RANGE, require_ct: bool = True):
    """Read one CT slice file -> ``(uint8 (H, W), dataset header)``; non-CT modality is a :class:`BadSource`."""
    ds = read_dicom(path)
    if not modality(ds) and "PixelData" not in ds:
        raise BadSource(path, "corrupt DICOM file or not an image (no Modality, no pixel data)")
    if require_ct and modality(ds) != "CT":
        raise BadSource(path, f"modality {modality(ds) or 'missing'}, not CT")
    return hu_to_uint8(decode_hu(ds, path), window=window, hu_range=hu_range), ds


__all__ = ["is_dicom_file", "read_dicom", "modality", "patient_id", "rescale", "slice_position",
           "instance_number", "sort_slices", "decode_hu", "hu_to_uint8", "read_ct_slice"]
