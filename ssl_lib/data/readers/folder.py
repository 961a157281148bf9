"""Labelled folder reader: DICOM or PNG/JPG slices plus a labels CSV (the Brain task and any user task).

Layout::

    <root>/labels.csv           columns ``file,label`` and optionally ``patient``, ``split``
    <root>/<file>               paths in ``file`` are relative to ``<root>``; any sub-folders

``label`` is a non-negative integer class index (binary tasks: 1 = the finding). ``split`` is
``train``/``val``/``test`` or empty; rows without one are split by patient by the store
(stratified, no patient in two splits).

* DICOM files (``.dcm`` or any suffix that is not an image's) must be CT (enhanced multi-frame CT
  gives one slice per frame, along the slice normal, each with the file's label); stored values -> HU
  (RescaleSlope/RescaleIntercept), then the radiological ``window=(centre, width)`` (default the
  paper's brain window 35/80 HU) or, with ``window=None``, the interval mapping of ``hu_range``
  (default -1024..3071 HU). A non-CT file is an error (or skipped with ``skip_bad=True``).
* PNG/JPG/BMP/TIFF files are converted to grey (RGB/RGBA via ITU-R 601 luma). 16-bit grey
  images need ``png16`` (``"bits:N"`` or ``"hu:OFFSET"``, then ``window``/``hu_range`` as for
  DICOM; see :func:`~ssl_lib.data.readers.load_grey_image`), else each is an error.

Patient = the CSV ``patient`` column, else the DICOM PatientID, else the file stem (counted per
file as ``patients_from_csv`` / ``_dicom`` / ``_file_name`` in the reader's counts; the store keeps
only a salted hash). ``source`` is the relative path for image files and ``dicom-<salted hash of
the relative path>`` for DICOM files (their paths may hold names); ``skipped.csv`` names files the
same way. Optional ``masks_root``: masks at ``<masks_root>/<file path with .png suffix>``
(non-zero = inside); files without one get none (``counts["images_without_mask"]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ssl_lib.data.intensity import BRAIN_WINDOW, PAPER_HU_RANGE
from ssl_lib.data.readers.base import (IMAGE_SUFFIXES, BadSource, SourceReader, load_grey_image, load_mask,
                                  parse_png16)
from ssl_lib.data.readers.dicom import patient_id, read_ct_slices
from ssl_lib.data.store import SPLITS, SliceRecord, StoreError

LABELS_CSV = "labels.csv"


class FolderReader(SourceReader):
    """Labelled slices listed in a CSV.

    ``root``: the folder. ``labels_csv``: the CSV (default ``<root>/labels.csv``).
    ``window``: ``(centre, width)`` HU for DICOM, or ``None`` for interval mapping of ``hu_range``.
    ``masks_root``: optional masks. The CSV is parsed on construction: ``labels`` (per row),
    ``num_classes`` (largest label + 1) are known before iterating.
    """

    kind = "folder"

    def __init__(self, root: str | os.PathLike, *, labels_csv: str | os.PathLike | None = None,
                 window: tuple[float, float] | None = BRAIN_WINDOW, hu_range: tuple[float, float] = PAPER_HU_RANGE,
                 masks_root: str | os.PathLike | None = None, png16: str | None = None,
                 skip_bad: bool = False, salt: str = ""):
        super().__init__(skip_bad=skip_bad, salt=salt)
        self.png16 = parse_png16(png16)
        root = Path(root)
        if not root.is_dir():
            raise StoreError(f"{root}: folder not found")
        self.root = root
        self.csv = Path(labels_csv) if labels_csv is not None else root / LABELS_CSV
        self.window = None if window is None else (float(window[0]), float(window[1]))
        self.hu_range = (float(hu_range[0]), float(hu_range[1]))
        self.masks_root = Path(masks_root) if masks_root is not None else None
        self.options = {"window": None if self.window is None else list(self.window), "hu_range": list(self.hu_range),
                        "masks": masks_root is not None, "labels_csv_given": labels_csv is not None, "png16": None if png16 is None else str(self.png16)}
        self.counts.update(rows=0, images=0, dicom_files=0, images_without_mask=0)
        self.rows = self._read_csv()
        self.labels = np.asarray([r[1] for r in self.rows], dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0

    def safe_name(self, rel: str) -> str:
        """How a file is named in ``source``/``skipped.csv``: the relative path, hashed for DICOM files."""
        return rel if Path(rel).suffix.lower() in IMAGE_SUFFIXES else f"dicom-{self.hashed(rel)}"

    def _read_csv(self) -> list[tuple[str, int, str, str]]:
        """``(file, label, patient, split)`` per usable CSV row."""
        import pandas as pd

        if not self.csv.is_file():
            what = "the folder is empty" if not any(self.root.iterdir()) else "columns file,label[,patient,split]"
            raise StoreError(f"{self.csv}: labels CSV not found ({what})")
        try:
            table = pd.read_csv(self.csv, dtype=str, keep_default_na=False, skipinitialspace=True)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise StoreError(f"{self.csv}: labels CSV unreadable or empty ({type(exc).__name__})") from exc
        table.columns = [str(c).strip().lower() for c in table.columns]
        missing = [c for c in ("file", "label") if c not in table.columns]
        if missing:
            raise StoreError(f"{self.csv}: labels CSV lacks column(s) {missing}; columns found: {list(table.columns)}")
        if table.empty:
            raise StoreError(f"{self.csv}: labels CSV has no rows")
        rows = []
        for n, rec in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
            rel = str(rec["file"]).strip()
            label_text = str(rec["label"]).strip()
            split = str(rec.get("split", "") or "").strip().lower()
            where = f"{self.csv} line {n} ({rel})"
            if not rel:
                self.bad(BadSource(f"{self.csv} line {n}", "empty file name"), f"{self.csv.name} line {n}")
                continue
            try:
                label = int(label_text)
            except ValueError:
                self.bad(BadSource(where, f"label {label_text!r} is not an integer"), self.safe_name(rel))
                continue
            if label < 0:
                self.bad(BadSource(where, f"label {label} is negative"), self.safe_name(rel))
                continue
            if split not in ("",) + SPLITS:
                self.bad(BadSource(where, f"split {split!r} is not one of {SPLITS}"), self.safe_name(rel))
                continue
            rows.append((rel, label, str(rec.get("patient", "") or "").strip(), split))
            self.count("rows")
        return rows

    def _records(self) -> Iterator[SliceRecord]:
        for rel, label, patient, split in self.rows:
            given = bool(patient)
            path = self.root / rel
            name = self.safe_name(rel)
            if not path.is_file():
                self.bad(BadSource(path, f"listed in {self.csv.name} but missing", f"labels CSV: {self.csv}"), name)
                continue
            try:
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    slices = [load_grey_image(path, png16=self.png16, window=self.window, hu_range=self.hu_range)]
                    self.count("images")
                else:
                    slices, ds = read_ct_slices(path, window=self.window, hu_range=self.hu_range)
                    patient = patient or patient_id(ds) or ""
                    self.count("dicom_files")
                    if len(slices) > 1:
                        self.count("multi_frame_files")
                mask = self._mask(rel, slices[0].shape)
            except BadSource as err:
                self.bad(err, name)
                continue
            # where the patient key came from (the store summary says so: a file-name key is no patient)
            self.count("patients_from_csv" if given else "patients_from_dicom" if patient else "patients_from_file_name")
            for k, pixels in enumerate(slices):  # an enhanced CT file: its frames along the slice normal
                yield SliceRecord(pixels=pixels, patient=patient or Path(rel).stem, label=label, split=split,
                                  source=name if len(slices) == 1 else f"{name}:f{k:04d}",
                                  mask=mask if len(slices) == 1 else None)

    def _mask(self, rel: str, shape: tuple[int, int]):
        if self.masks_root is None:
            return None
        path = self.masks_root / Path(rel).with_suffix(".png")
        if not path.is_file():
            self.count("images_without_mask")
            return None
        return load_mask(path, shape)


__all__ = ["FolderReader", "LABELS_CSV"]
