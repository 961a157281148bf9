"""LIDC-IDRI reader: the TCIA download tree -> unlabeled CT slices (the paper's pre-training data).

Layout (as the NBIA Data Retriever writes it)::

    LIDC-IDRI/                      ``root`` (or its parent folder)
      LIDC-IDRI-0001/               patient folder
        <study>/                    study folder (any name)
          <series>/                 series folder (any name)
            1-001.dcm, ...          one file per slice; other files (e.g. the XML reads) are ignored

Any folder below a patient folder holding ``*.dcm`` files is one series. As in Wolf et al. 2023
(and the authors' ``LIDC_3DDICOM_to_2Dpng.py``):

* series with ``<= min_series_images`` files (LIDC's radiographs, scouts) are skipped and counted
  (``counts["skipped_series_small"]``); then series whose Modality is not ``CT`` are skipped and
  counted (``counts["skipped_series_non_ct"]``);
* slices are ordered by position along the slice normal (ImagePositionPatient z for axial
  series), by InstanceNumber where a position is missing;
* stored values -> HU with RescaleSlope/RescaleIntercept, then the interval mapping
  -1024..3071 HU -> 0..255 without windowing.

Patient = the PatientID header, else the patient folder name (the store keeps only a salted
hash). ``source`` is ``"<series key>:<slice number>"`` with the series key a salted hash of the
series' relative path, so no DICOM name, ID, date or UID is written. In ``skipped.csv`` files are
named ``<patient key>/<series key>/file<NNNN>`` (the real path goes to the log only).
Records are unlabeled (``label=-1``) with no split (the store splits by patient).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from ssl_lib.data.intensity import PAPER_HU_RANGE
from ssl_lib.data.readers import BadSource, SourceReader
from ssl_lib.data.readers.dicom import (decode_hu, hu_to_uint8, modality, patient_id, read_dicom, rescale,
                                        sort_slices)
from ssl_lib.data.store import SliceRecord, StoreError

#: The authors' threshold: series with at most this many files are not CT volumes.
MIN_SERIES_IMAGES = 10


class LidcReader(SourceReader):
    """Unlabeled HU-mapped slices of every CT series under a LIDC-IDRI tree.

    ``root``: the ``LIDC-IDRI`` folder (or a folder containing it). ``min_series_images``:
    series with at most this many ``.dcm`` files are skipped. ``hu_range``: HU interval mapped
    onto 0..255. ``salt`` keys the hashed series/patient keys in ``source`` and ``skipped.csv``.
    """

    kind = "lidc"

    def __init__(self, root: str | os.PathLike, *, min_series_images: int = MIN_SERIES_IMAGES,
                 hu_range: tuple[float, float] = PAPER_HU_RANGE, skip_bad: bool = False, salt: str = ""):
        super().__init__(skip_bad=skip_bad, salt=salt)
        root = Path(root)
        if (root / "LIDC-IDRI").is_dir():
            root = root / "LIDC-IDRI"
        if not root.is_dir():
            raise StoreError(f"{root}: LIDC-IDRI folder not found")
        self.root = root
        self.min_series_images = int(min_series_images)
        self.hu_range = (float(hu_range[0]), float(hu_range[1]))
        self.options = {"min_series_images": self.min_series_images, "hu_range": list(self.hu_range)}
        self.counts.update(patients=0, series=0, series_read=0, skipped_series_small=0, skipped_series_non_ct=0,
                           skipped_series_unreadable=0)

    def series(self) -> Iterator[tuple[str, Path, list[Path]]]:
        """``(patient folder name, series folder, sorted .dcm files)`` for every series folder."""
        for patient_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            self.count("patients")
            for folder, dirs, files in os.walk(patient_dir):
                dirs.sort()
                dcm = sorted(Path(folder) / f for f in files if f.lower().endswith(".dcm"))
                if dcm:
                    yield patient_dir.name, Path(folder), dcm

    def _records(self) -> Iterator[SliceRecord]:
        found = False
        for patient_folder, folder, files in self.series():
            found = True
            self.count("series")
            yield from self._series_records(patient_folder, folder, files)
        if not found:
            raise StoreError(f"{self.root}: no DICOM series found (expected <patient>/<study>/<series>/*.dcm)")

    def _series_records(self, patient_folder: str, folder: Path, files: list[Path]) -> Iterator[SliceRecord]:
        if len(files) <= self.min_series_images:
            self.count("skipped_series_small")
            return
        series_key = self.hashed(folder.relative_to(self.root).as_posix())[:12]
        patient_hash = self.hashed(patient_folder)

        def safe_name(i: int) -> str:  # skipped.csv name without the patient folder or file name
            return f"{patient_hash}/{series_key}/file{i:04d}"

        headers = []
        for i, path in enumerate(files):
            try:
                ds = read_dicom(path, pixels=False)
                if not modality(ds):
                    raise BadSource(path, "corrupt DICOM file or not an image (no Modality)")
            except BadSource as err:
                self.bad(err, safe_name(i))
                continue
            headers.append((i, path, ds))
        if not headers:
            self.count("skipped_series_unreadable")
            return
        if {modality(ds) for _, _, ds in headers} != {"CT"}:
            self.count("skipped_series_non_ct")
            return
        usable = []
        for i, path, ds in headers:
            try:
                rescale(ds, path)
            except BadSource as err:
                self.bad(err, safe_name(i))
                continue
            usable.append(((i, path), ds))
        patient = patient_id(headers[0][2]) or patient_folder
        self.count("series_read")
        for number, ((i, path), _) in enumerate(sort_slices(usable)):
            try:
                hu = decode_hu(read_dicom(path), path)
            except BadSource as err:
                self.bad(err, safe_name(i))
                continue
            yield SliceRecord(pixels=hu_to_uint8(hu, hu_range=self.hu_range), patient=patient, label=-1,
                              split="", source=f"{series_key}:{number:04d}")
