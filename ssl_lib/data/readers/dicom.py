"""Shared DICOM decoding for the readers: header checks, slice order, stored values -> HU -> uint8.

Every function that touches a file raises :class:`~ssl_lib.data.readers.BadSource` (a
:class:`~ssl_lib.data.store.StoreError`) naming the file and the problem, with pydicom's own
exception chained. Nothing here returns or logs a header value that could identify a patient
except :func:`patient_id`, whose result readers only hand to the store (which hashes it).

HU conversion follows DICOM PS3.3 C.11.1.1.2 (``HU = stored * RescaleSlope + RescaleIntercept``)
via :func:`ssl_lib.data.intensity.to_hu`; the 8-bit mapping is either the paper's interval
mapping (-1024..3071 HU -> 0..255, :func:`~ssl_lib.data.intensity.interval_map`) or a
radiological window (:func:`~ssl_lib.data.intensity.window`).

Compressed transfer syntaxes (JPEG Baseline/Extended, JPEG Lossless, JPEG-LS, JPEG 2000, RLE)
decode through pydicom's pixel-data plugins (``pylibjpeg`` with ``pylibjpeg-libjpeg``,
``pylibjpeg-openjpeg``, ``pylibjpeg-rle``; pinned in ``requirements.txt``). A file that still
cannot be decoded is one :class:`BadSource` naming the transfer syntax (name and UID) and what
would decode it (:func:`decoder_help`).

Enhanced (multi-frame) CT keeps RescaleSlope/Intercept, ImagePositionPatient and
ImageOrientationPatient in its functional groups (per-frame, else shared, PS3.3 C.7.6.16):
:func:`frames_of` lists one :class:`Frame` per frame with its own rescale and position, so a
multi-frame file becomes slices ordered along the slice normal with the same HU mapping as
single-frame files.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from ssl_lib.data.intensity import PAPER_HU_RANGE, hu_to_uint8, to_hu
from ssl_lib.data.readers.base import BadSource

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


def _numbers(value, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        return None
    return arr if arr is not None and arr.shape == (n,) else None


def position_along_normal(ipp, iop) -> float | None:
    """ImagePositionPatient projected on the normal of ImageOrientationPatient (mm); plain z without IOP."""
    pos = _numbers(ipp, 3)
    if pos is None:
        return None
    o = _numbers(iop, 6)
    if o is not None:
        normal = np.cross(o[:3], o[3:])
        if np.linalg.norm(normal) > 0.5:
            return float(pos @ normal)
    return float(pos[2])


def slice_position(ds) -> float | None:
    """Position of the slice along the stack's normal (mm), ``None`` without ImagePositionPatient.

    With ImageOrientationPatient the position is projected on the slice normal
    (row x column direction), which is the ImagePositionPatient z for axial slices; without it,
    the plain z.
    """
    return position_along_normal(getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None))


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


def transfer_syntax(ds):
    """The file's Transfer Syntax UID (a ``pydicom.uid.UID``), or ``None``."""
    meta = getattr(ds, "file_meta", None)
    return getattr(meta, "TransferSyntaxUID", None) if meta is not None else None


#: pydicom's pixel-data plugins this project pins (import name -> distribution).
PIXEL_PLUGINS = {"pylibjpeg": "pylibjpeg", "libjpeg": "pylibjpeg-libjpeg", "openjpeg": "pylibjpeg-openjpeg",
                 "rle": "pylibjpeg-rle"}


def pixel_plugins() -> dict[str, str | None]:
    """Version of each pinned pixel-data plugin that imports here (``None``: missing); kept in store meta."""
    import importlib

    out = {}
    for module, dist in PIXEL_PLUGINS.items():
        try:
            out[dist] = str(getattr(importlib.import_module(module), "__version__", "installed"))
        except ImportError:
            out[dist] = None
    return out


def decoder_help(uid) -> str:
    """What would decode pixel data of transfer syntax ``uid`` here (installed plugins or what to install)."""
    import pydicom
    from pydicom.pixels import get_decoder

    if uid is None:
        return "the file has no Transfer Syntax UID in its file meta information; rewrite it with one"
    if uid.is_transfer_syntax and not uid.is_compressed:
        return ("no plugin is needed for uncompressed pixel data: it does not match Rows x Columns x "
                "BitsAllocated x frames, so the file is probably truncated")
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return (f"pydicom {pydicom.__version__} has no decoder for this transfer syntax; convert the file to an "
                "uncompressed transfer syntax first (e.g. 'gdcmconv --raw in.dcm out.dcm' or dcmtk's 'dcmdjpeg')")
    if not decoder.is_available:
        return "install one of these pixel-data plugins: " + "; ".join(decoder.missing_dependencies)
    return (f"the installed decoder plugin(s) {', '.join(decoder.available_plugins)} failed on it: the pixel data "
            "is probably truncated or corrupt (other plugins: " + ("; ".join(decoder.missing_dependencies) or "none")
            + ")")


def _undecodable(path, ds, exc: BaseException) -> BadSource:
    uid = transfer_syntax(ds)
    what = f"transfer syntax {uid.name} ({uid})" if uid is not None else "no transfer syntax"
    return BadSource(path, f"pixel data could not be decoded: {what}; {decoder_help(uid)}", type(exc).__name__)


def stored_frames(ds, path: str | os.PathLike) -> np.ndarray:
    """Stored pixel values of every frame, ``(F, H, W)`` (``F = 1`` for single-frame files)."""
    if "PixelData" not in ds:
        raise BadSource(path, "no pixel data")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # unsupported transfer syntax, missing plugin, truncated pixel data, ...
        raise _undecodable(path, ds, exc) from exc
    n = number_of_frames(ds)
    if stored.ndim == 2 and n == 1:
        return stored[None]
    if stored.ndim == 3 and stored.shape[0] == n and n > 1:
        return stored
    raise BadSource(path, f"expected {n} grey frame(s), got pixel array of shape {stored.shape}")


def decode_hu(ds, path: str | os.PathLike) -> np.ndarray:
    """Pixel data -> HU, float32 ``(H, W)``; needs the rescale tags and a single frame."""
    slope, intercept = rescale(ds, path)
    stored = stored_frames(ds, path)
    if stored.shape[0] != 1:
        raise BadSource(path, f"expected one grey frame, got {stored.shape[0]} frames (use frames_of)")
    return to_hu(stored[0], slope, intercept)


def number_of_frames(ds) -> int:
    try:
        return max(1, int(getattr(ds, "NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


@dataclass(frozen=True)
class Frame:
    """One slice of a file: ``index`` (``None``: single-frame file), rescale, position along the normal."""

    index: int | None
    slope: float
    intercept: float
    position: float | None
    number: int | None = None  # InstanceNumber (single-frame) or the frame's InStackPositionNumber


def _group_item(ds, frame_item, sequence: str):
    """First item of ``sequence`` in the per-frame group item, else in the shared group, else ``None``."""
    for group in (frame_item, _first(ds.get("SharedFunctionalGroupsSequence"))):
        item = _first(group.get(sequence)) if group is not None else None
        if item is not None:
            return item
    return None


def _first(seq):
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


def frames_of(ds, path: str | os.PathLike) -> list[Frame]:
    """The slices of one file with their own rescale and position (enhanced CT: from functional groups).

    Single-frame files give one :class:`Frame` (``index=None``) from the top-level tags;
    multi-frame files one per frame, rescale and plane position/orientation taken per frame from
    ``PerFrameFunctionalGroupsSequence``, else ``SharedFunctionalGroupsSequence``, else the top level.
    Missing rescale values are a :class:`BadSource` naming the frame.
    """
    n = number_of_frames(ds)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if n == 1 and not per_frame:
        pos = slice_position(ds)
        return [Frame(None, *rescale(ds, path), pos, instance_number(ds))]
    if per_frame is not None and len(per_frame) != n:
        raise BadSource(path, f"{n} frames but {len(per_frame)} per-frame functional group items")
    frames = []
    for k in range(n):
        item = per_frame[k] if per_frame is not None else None
        pvt = _group_item(ds, item, "PixelValueTransformationSequence")
        source = pvt if pvt is not None and "RescaleSlope" in pvt else ds
        try:
            slope, intercept = rescale(source, path)
        except BadSource as err:
            raise BadSource(path, f"frame {k + 1}: {err.problem} (looked in the per-frame and shared functional "
                                  "groups' PixelValueTransformationSequence and the top level)") from err
        plane = _group_item(ds, item, "PlanePositionSequence")
        orient = _group_item(ds, item, "PlaneOrientationSequence")
        ipp = getattr(plane, "ImagePositionPatient", None) if plane is not None else getattr(ds, "ImagePositionPatient", None)
        iop = getattr(orient, "ImageOrientationPatient", None) if orient is not None else getattr(ds, "ImageOrientationPatient", None)
        content = _group_item(ds, item, "FrameContentSequence")
        number = getattr(content, "InStackPositionNumber", None) if content is not None else None
        frames.append(Frame(k, slope, intercept, position_along_normal(ipp, iop),
                            int(number) if number not in (None, "") else k + 1))
    return frames


def sort_frames(items: list[tuple[object, Frame]]) -> list[tuple[object, Frame]]:
    """Sort ``(key, frame)`` pairs along the slice normal; by number where any position is missing."""
    if all(f.position is not None for _, f in items):
        order = sorted(range(len(items)), key=lambda i: (items[i][1].position, items[i][1].number or 0, i))
    else:
        order = sorted(range(len(items)), key=lambda i: (items[i][1].number is None, items[i][1].number or 0, i))
    return [items[i] for i in order]


def decode_frame_uint8(path: str | os.PathLike, frame: Frame, window: tuple[float, float] | None = None,
                       hu_range: tuple[float, float] = PAPER_HU_RANGE) -> np.ndarray:
    """Read and decode one slice (one frame of a multi-frame file) -> uint8 ``(H, W)`` after the HU mapping."""
    return frame_uint8(stored_frames(read_dicom(path), path), frame, path, window=window, hu_range=hu_range)


def frame_uint8(stored: np.ndarray, frame: Frame, path: str | os.PathLike, *, window: tuple[float, float] | None = None,
                hu_range: tuple[float, float] = PAPER_HU_RANGE) -> np.ndarray:
    """One frame of a file's decoded pixel data ``stored`` ``(F, H, W)`` -> uint8 ``(H, W)`` after the HU mapping."""
    k = 0 if frame.index is None else frame.index
    if not 0 <= k < stored.shape[0]:
        raise BadSource(path, f"frame {k + 1} missing: the pixel data holds {stored.shape[0]} frame(s)")
    return stored_to_uint8(stored[k], frame.slope, frame.intercept, window=window, hu_range=hu_range)


def _checked_ct(path, require_ct: bool):
    ds = read_dicom(path)
    if not modality(ds) and "PixelData" not in ds:
        raise BadSource(path, "corrupt DICOM file or not an image (no Modality, no pixel data)")
    if require_ct and modality(ds) != "CT":
        raise BadSource(path, f"modality {modality(ds) or 'missing'}, not CT")
    return ds


@functools.lru_cache(maxsize=64)
def _uint8_lut(dtype: str, slope: float, intercept: float, window, hu_range) -> np.ndarray:
    """uint8 of every value of a <= 16-bit integer ``dtype`` (indexed by its unsigned view)."""
    dt = np.dtype(dtype)
    values = np.arange(2 ** (8 * dt.itemsize), dtype=np.dtype(f"u{dt.itemsize}")).view(dt)
    return hu_to_uint8(to_hu(values, slope, intercept), window=window, hu_range=hu_range)


def stored_to_uint8(stored: np.ndarray, slope: float, intercept: float, *, window: tuple[float, float] | None = None,
                    hu_range: tuple[float, float] = PAPER_HU_RANGE) -> np.ndarray:
    """Stored values -> HU -> uint8 in one step: ``hu_to_uint8(to_hu(stored, slope, intercept))``.

    For 8/16-bit integer pixels (all CT) a lookup table built with exactly that formula over every
    possible value (cached per rescale and mapping) replaces the float work: same bytes, about 5x faster.
    """
    if stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2:
        lut = _uint8_lut(stored.dtype.str, float(slope), float(intercept),
                         None if window is None else (float(window[0]), float(window[1])),
                         (float(hu_range[0]), float(hu_range[1])))
        return np.take(lut, np.ascontiguousarray(stored).view(np.dtype(f"u{stored.dtype.itemsize}")))
    return hu_to_uint8(to_hu(stored, slope, intercept), window=window, hu_range=hu_range)


def read_ct_slice(path: str | os.PathLike, *, window: tuple[float, float] | None = None,
                  hu_range: tuple[float, float] = PAPER_HU_RANGE, require_ct: bool = True):
    """Read one single-frame CT slice file -> ``(uint8 (H, W), dataset header)``; non-CT modality is a :class:`BadSource`."""
    ds = _checked_ct(path, require_ct)
    slope, intercept = rescale(ds, path)
    stored = stored_frames(ds, path)
    if stored.shape[0] != 1:
        raise BadSource(path, f"expected one grey frame, got {stored.shape[0]} frames (use read_ct_slices)")
    return stored_to_uint8(stored[0], slope, intercept, window=window, hu_range=hu_range), ds


def read_ct_slices(path: str | os.PathLike, *, window: tuple[float, float] | None = None,
                   hu_range: tuple[float, float] = PAPER_HU_RANGE, require_ct: bool = True):
    """Read a CT file with one or more frames -> ``([uint8 (H, W), ...] along the slice normal, header)``."""
    ds = _checked_ct(path, require_ct)
    frames = [f for _, f in sort_frames([(None, f) for f in frames_of(ds, path)])]
    stored = stored_frames(ds, path)
    out = [stored_to_uint8(stored[0 if f.index is None else f.index], f.slope, f.intercept, window=window,
                           hu_range=hu_range) for f in frames]
    return out, ds


__all__ = ["is_dicom_file", "read_dicom", "modality", "patient_id", "rescale", "slice_position",
           "position_along_normal", "instance_number", "sort_slices", "decode_hu", "hu_to_uint8", "read_ct_slice",
           "read_ct_slices", "Frame", "frames_of", "sort_frames", "stored_frames", "decode_frame_uint8",
           "decoder_help", "transfer_syntax", "number_of_frames", "stored_to_uint8", "pixel_plugins"]
