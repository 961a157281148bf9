"""What every source reader shares: the reader base class, the bad-file error, image and mask decoding.

The readers (:mod:`.lidc`, :mod:`.covidct`, :mod:`.medmnist`, :mod:`.folder`) import this module;
the package (:mod:`ssl_lib.data.readers`) imports the readers and re-exports these names, so no
reader imports the package back.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ssl_lib.data.intensity import PAPER_HU_RANGE, hu_to_uint8, to_grey
from ssl_lib.data.store import SkipLog, SliceRecord, StoreError, patient_key

log = logging.getLogger("ssl_lib.data.readers")

#: File suffixes decoded with PIL (anything else is tried as DICOM).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class BadSource(StoreError):
    """One unusable source file: ``path`` and ``problem`` (a short text without file contents).

    The message is ``"<path>: <problem> (<library detail>)"``. ``problem`` alone is what goes
    into ``skipped.csv``, so it never carries header values or library messages.
    """

    def __init__(self, path: str | os.PathLike, problem: str, detail: str = ""):
        self.path, self.problem, self.detail = str(path), problem, detail
        super().__init__(f"{path}: {problem}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # travels back from worker processes intact
        return (type(self), (self.path, self.problem, self.detail))


class SourceReader:
    """Base of the readers: iteration, skip handling and counts.

    Subclasses implement :meth:`_records` and set ``options`` (JSON-safe, no paths: they go into
    the store's ``meta["reader"]``).
    """

    kind = ""

    def __init__(self, *, skip_bad: bool = False, salt: str = ""):
        self.skip_bad = skip_bad
        self.salt = salt
        self.skipped = SkipLog()
        self.counts: dict[str, int] = {"slices": 0, "skipped_files": 0}
        self.options: dict = {}
        #: slices are resized to this size where the reader can do it in its workers (set by build_store)
        self.target_size: int | None = None

    def __iter__(self) -> Iterator[SliceRecord]:
        for rec in self._records():
            self.counts["slices"] += 1
            yield rec

    def size_hint(self) -> int | None:
        """About how many slices the reader yields (for a progress bar), ``None`` if unknown."""
        return None

    def _records(self) -> Iterator[SliceRecord]:  # pragma: no cover - abstract
        raise NotImplementedError

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def bad(self, err: BadSource, logged_path: str | None = None) -> None:
        """Raise ``err``, or with ``skip_bad`` log it and record ``logged_path`` (default its path)."""
        if not self.skip_bad:
            raise err
        # the log line names the file as skipped.csv does: a source path may name a patient, and in
        # a notebook the log ends up in the executed notebook
        log.warning("skipped %s: %s", err.path if logged_path is None else logged_path, err.problem)
        self.skipped.add(err.path if logged_path is None else logged_path, err.problem)
        self.count("skipped_files")

    def hashed(self, raw: str) -> str:
        """A salted one-way key (16 hex digits) for names that may identify a patient."""
        return patient_key(raw, self.salt)

    def summary(self) -> dict:
        """``{"kind", "options", "counts"}`` as stored in ``meta["reader"]``."""
        return {"kind": self.kind, "options": dict(self.options), "counts": self.counts}


@dataclass(frozen=True)
class Png16:
    """How 16-bit grey images (PNG/TIFF ``I;16``) become 8-bit; see :func:`parse_png16`.

    ``mode``: ``"bits"`` (``value * 255 / (2**bits - 1)``, values above ``2**bits - 1`` are an
    error), or ``"hu"`` (``HU = value - offset``, then the reader's window or HU interval).
    """

    mode: str
    bits: int = 16
    offset: float = 0.0

    def __str__(self) -> str:
        return f"bits:{self.bits}" if self.mode == "bits" else f"hu:{self.offset:g}"


#: How to say which 16-bit mapping to use (part of every 16-bit error message).
PNG16_HELP = ("choose a mapping with png16='bits:N' (the image's bit depth N, e.g. 'bits:12' maps 0..4095 "
              "onto 0..255) or png16='hu:OFFSET' (HU = value - OFFSET, e.g. 'hu:1024', then the task's window "
              "or HU interval)")


def parse_png16(spec: "str | Png16 | None") -> "Png16 | None":
    """``None`` (16-bit grey images are an error), ``"bits:N"`` (1 <= N <= 16) or ``"hu:OFFSET"``."""
    if spec is None or isinstance(spec, Png16):
        return spec
    text = str(spec).strip().lower()
    mode, _, value = text.partition(":")
    try:
        if mode == "bits" and 1 <= int(value) <= 16:
            return Png16("bits", bits=int(value))
        if mode == "hu":
            return Png16("hu", offset=float(value))
    except ValueError:
        pass
    raise ValueError(f"png16={spec!r} is not a 16-bit mapping; {PNG16_HELP}")


def load_grey_image(path: Path, *, png16: "str | Png16 | None" = None, window: tuple[float, float] | None = None,
                    hu_range: tuple[float, float] = PAPER_HU_RANGE) -> np.ndarray:
    """PNG/JPG/... -> uint8 ``(H, W)`` grey (RGB/RGBA/palette via :func:`~ssl_lib.data.intensity.to_grey`).

    16-bit grey images (values up to 65535) are never scaled silently: without ``png16`` they are
    a :class:`BadSource` naming the file, its value range and the choices; ``png16="bits:N"`` maps
    ``0 .. 2**N - 1`` onto ``0 .. 255``; ``png16="hu:OFFSET"`` reads ``value - OFFSET`` as HU and
    applies ``window=(centre, width)`` or, without one, the interval mapping of ``hu_range``.
    """
    arr = _open_image(path)
    if arr.ndim == 2 and arr.dtype.kind in "iu" and arr.dtype.itemsize > 1:
        return _sixteen_bit(path, arr, parse_png16(png16), window, hu_range)
    try:
        return to_grey(arr)
    except ValueError as exc:
        raise BadSource(path, "unsupported image layout", str(exc)) from exc


def _open_image(path: Path) -> np.ndarray:
    """Decoded pixels: uint8 grey/RGB/RGBA, or 2-D uint16/int32 for 16-bit grey images."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode in ("1", "L", "LA"):
                img = img.convert("L")
            elif img.mode in ("P", "PA"):
                img = img.convert("RGBA")
            elif img.mode not in ("RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F"):
                img = img.convert("RGB")
            arr = np.asarray(img)
    except FileNotFoundError as exc:
        raise BadSource(path, "file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadSource(path, "not a readable image", f"{type(exc).__name__}: {exc}") from exc
    if arr.dtype.kind == "f":
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr


def _sixteen_bit(path, arr: np.ndarray, rule: "Png16 | None", window, hu_range) -> np.ndarray:
    lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
    if rule is None:
        raise BadSource(path, f"16-bit grey image (values {lo}..{hi}) would be darkened by an 8-bit mapping; "
                              f"{PNG16_HELP}")
    if lo < 0:
        raise BadSource(path, f"16-bit image with negative values ({lo}..{hi})")
    if rule.mode == "bits":
        top = 2 ** rule.bits - 1
        if hi > top:
            raise BadSource(path, f"16-bit grey image has values up to {hi}, above {top} of png16='{rule}'; {PNG16_HELP}")
        return np.clip(np.rint(arr.astype(np.float32) * (255.0 / top)), 0, 255).astype(np.uint8)
    return hu_to_uint8(arr.astype(np.float32) - np.float32(rule.offset), window=window, hu_range=hu_range)


def load_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Mask image -> uint8 ``(H, W)`` 0/1 (non-zero = inside); must match the slice's ``shape``."""
    try:
        arr = _open_image(path)
        grey = arr if arr.ndim == 2 else to_grey(arr)  # a mask is its non-zero pixels, at any bit depth
    except BadSource as err:
        raise BadSource(path, f"mask: {err.problem}", err.detail) from err
    except ValueError as exc:
        raise BadSource(path, "mask: unsupported image layout", str(exc)) from exc
    if grey.shape != tuple(shape):
        raise BadSource(path, f"mask is {grey.shape[1]}x{grey.shape[0]} but its image is {shape[1]}x{shape[0]}")
    return (grey > 0).astype(np.uint8)
