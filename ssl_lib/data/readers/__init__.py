"""Source readers: one per source layout, each yielding :class:`~ssl_lib.data.store.SliceRecord`.

=================  ===================================  ==========================================
kind               reader                               layout
=================  ===================================  ==========================================
``"lidc"``         :class:`~.lidc.LidcReader`           ``LIDC-IDRI/<patient>/<study>/<series>/*.dcm``
``"covid"``        :class:`~.covidct.CovidCTReader`     ``CT_COVID/``, ``CT_NonCOVID/``, ``Data-split/``
``"medmnist"``     :class:`~.medmnist.MedMNISTReader`   one ``.npz`` with ``{train,val,test}_{images,labels}``
``"folder"``       :class:`~.folder.FolderReader`       DICOM/PNG slices + ``labels.csv`` (``file,label``)
=================  ===================================  ==========================================

Every reader is an iterable of records with two side products filled while it is iterated:
``counts`` (a dict of plain integers: slices read, series or images skipped and why) and
``skipped`` (a :class:`~ssl_lib.data.store.SkipLog`). Bad input raises *one*
:class:`~ssl_lib.data.store.StoreError` naming the file and the problem (the library error
chained with ``from``); with ``skip_bad=True`` the file is skipped, logged (``logging``
warning with its real path) and recorded in ``skipped`` instead. Records carry the raw patient
identifier (the store keeps only its salted hash) and a non-identifying ``source``.
:func:`ssl_lib.data.build.build_store` turns a reader into a store.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ssl_lib.data.intensity import to_grey
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

    def __iter__(self) -> Iterator[SliceRecord]:
        for rec in self._records():
            self.counts["slices"] += 1
            yield rec

    def _records(self) -> Iterator[SliceRecord]:  # pragma: no cover - abstract
        raise NotImplementedError

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def bad(self, err: BadSource, logged_path: str | None = None) -> None:
        """Raise ``err``, or with ``skip_bad`` log it and record ``logged_path`` (default its path)."""
        if not self.skip_bad:
            raise err
        log.warning("skipped %s", err)
        self.skipped.add(err.path if logged_path is None else logged_path, err.problem)
        self.count("skipped_files")

    def hashed(self, raw: str) -> str:
        """A salted one-way key (16 hex digits) for names that may identify a patient."""
        return patient_key(raw, self.salt)

    def summary(self) -> dict:
        """``{"kind", "options", "counts"}`` as stored in ``meta["reader"]``."""
        return {"kind": self.kind, "options": dict(self.options), "counts": self.counts}


def load_grey_image(path: Path) -> np.ndarray:
    """PNG/JPG/... -> uint8 ``(H, W)`` grey (RGB/RGBA/palette via :func:`~ssl_lib.data.intensity.to_grey`)."""
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
    elif arr.dtype == np.int32:
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    try:
        return to_grey(arr)
    except ValueError as exc:
        raise BadSource(path, "unsupported image layout", str(exc)) from exc


def load_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Mask image -> uint8 ``(H, W)`` 0/1 (non-zero = inside); must match the slice's ``shape``."""
    try:
        grey = load_grey_image(path)
    except BadSource as err:
        raise BadSource(path, f"mask: {err.problem}", err.detail) from err
    if grey.shape != tuple(shape):
        raise BadSource(path, f"mask is {grey.shape[1]}x{grey.shape[0]} but its image is {shape[1]}x{shape[0]}")
    return (grey > 0).astype(np.uint8)


from ssl_lib.data.readers.covidct import CovidCTReader  # noqa: E402
from ssl_lib.data.readers.folder import FolderReader  # noqa: E402
from ssl_lib.data.readers.lidc import LidcReader  # noqa: E402
from ssl_lib.data.readers.medmnist import MedMNISTReader, fetch_medmnist  # noqa: E402

#: ``kind`` -> reader class, as :func:`ssl_lib.data.build.build_store` uses it.
READERS = {"lidc": LidcReader, "covid": CovidCTReader, "medmnist": MedMNISTReader, "folder": FolderReader}

__all__ = [
    "BadSource", "SourceReader", "load_grey_image", "load_mask", "IMAGE_SUFFIXES",
    "LidcReader", "CovidCTReader", "MedMNISTReader", "FolderReader", "fetch_medmnist", "READERS",
]
