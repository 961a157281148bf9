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

Enhanced (multi-frame) CT files count one image per frame and give one slice per frame (rescale
and position from the functional groups, :func:`~ssl_lib.data.readers.dicom.frames_of`).

Ingest at scale: ``workers`` (``"auto"``: one per core once the tree is large enough) reads the
series headers and decodes the slices in worker processes
(:class:`~ssl_lib.data.workers.OrderedPool`), resized there to ``target_size`` when the store
sets one; records still come in series order, so the store is the same for any worker count.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ssl_lib.data.intensity import PAPER_HU_RANGE
from ssl_lib.data.readers.base import BadSource, SourceReader
from ssl_lib.data.readers.dicom import (Frame, decode_frame_uint8, frame_uint8, frames_of, modality, patient_id,
                                        pixel_plugins, read_dicom, sort_frames, stored_frames)
from ssl_lib.data.store import SliceRecord, StoreError, grey_sums, resize_slice
from ssl_lib.data.workers import OrderedPool, resolve_workers

#: The authors' threshold: series with at most this many images are not CT volumes.
MIN_SERIES_IMAGES = 10


def scan_header(path: str) -> tuple[str, str | None, list[Frame] | BadSource]:
    """One file's header -> ``(modality, PatientID, frames or the rescale problem)``; unreadable: :class:`BadSource`."""
    ds = read_dicom(path, pixels=False)
    if not modality(ds):
        raise BadSource(path, "corrupt DICOM file or not an image (no Modality)")
    try:
        frames: list[Frame] | BadSource = frames_of(ds, path)
    except BadSource as err:
        frames = err
    return modality(ds), patient_id(ds), frames


def decode_slice(path: str, frame: Frame, hu_range: tuple[float, float], size: int | None, stored=None):
    """Worker job: one slice -> ``(uint8 (H, W) after the HU interval mapping, resized to size; its grey sums)``.

    ``stored``: the file's decoded frames ``(F, H, W)`` when the caller already has them (a
    multi-frame file is decoded once for all its frames, not once per frame)."""
    pixels = decode_frame_uint8(path, frame, hu_range=hu_range) if stored is None \
        else frame_uint8(stored, frame, path, hu_range=hu_range)
    if size is not None:
        pixels = resize_slice(pixels, size)
    return pixels, grey_sums(pixels)


#: Slices per worker job: enough to amortise the per-job cost of the process pool.
CHUNK = 16


def decode_slices(items: list[tuple[str, Frame, int]], hu_range: tuple[float, float], size: int | None,
                  direct: tuple[str, int] | None = None) -> list:
    """Worker job: :func:`decode_slice` of several ``(path, frame, slot)``; a bad one becomes its :class:`BadSource`.

    ``direct=(images.npy path, header length)``: each slice is written into the store's image file at
    its slot (``header + slot * size**2``) and only ``(None, sums)`` travels back, so the writing
    process never copies pixel bytes.
    """
    out = []
    decoded: dict[str, np.ndarray | BadSource] = {}  # multi-frame files of this job, each decoded once
    fd = os.open(direct[0], os.O_WRONLY) if direct is not None else None
    try:
        for path, frame, slot in items:
            try:
                stored = None
                if frame.index is not None:
                    if path not in decoded:
                        try:
                            decoded[path] = stored_frames(read_dicom(path), path)
                        except BadSource as err:
                            decoded[path] = err
                    if isinstance(decoded[path], BadSource):
                        raise decoded[path]
                    stored = decoded[path]
                pixels, sums = decode_slice(path, frame, hu_range, size, stored)
            except BadSource as err:
                out.append(err)
                continue
            if fd is None:
                out.append((pixels, sums))
            else:
                os.pwrite(fd, memoryview(np.ascontiguousarray(pixels)).cast("B"), direct[1] + slot * pixels.size)
                out.append((None, sums))
    finally:
        if fd is not None:
            os.close(fd)
    return out


class LidcReader(SourceReader):
    """Unlabeled HU-mapped slices of every CT series under a LIDC-IDRI tree.

    ``root``: the ``LIDC-IDRI`` folder (or a folder containing it). ``min_series_images``:
    series with at most this many images are skipped. ``hu_range``: HU interval mapped
    onto 0..255. ``salt`` keys the hashed series/patient keys in ``source`` and ``skipped.csv``.
    ``workers``: processes that read and decode (``"auto"`` or a number; 1 = in this process).
    """

    kind = "lidc"

    def __init__(self, root: str | os.PathLike, *, min_series_images: int = MIN_SERIES_IMAGES,
                 hu_range: tuple[float, float] = PAPER_HU_RANGE, workers: int | str = 1,
                 skip_bad: bool = False, salt: str = ""):
        super().__init__(skip_bad=skip_bad, salt=salt)
        root = Path(root)
        if (root / "LIDC-IDRI").is_dir():
            root = root / "LIDC-IDRI"
        if not root.is_dir():
            raise StoreError(f"{root}: LIDC-IDRI folder not found")
        self.root = root
        self.min_series_images = int(min_series_images)
        self.hu_range = (float(hu_range[0]), float(hu_range[1]))
        resolve_workers(workers)  # a bad value fails here, before anything is read
        self.workers = workers
        self.options = {"min_series_images": self.min_series_images, "hu_range": list(self.hu_range),
                        "pixel_plugins": pixel_plugins()}
        self.counts.update(patients=0, series=0, series_read=0, skipped_series_small=0, skipped_series_non_ct=0,
                           skipped_series_unreadable=0, multi_frame_files=0)
        self._series: list[tuple[str, Path, list[Path]]] | None = None
        self._images: tuple[str, int, int] | None = None
        self._slot = 0

    def bind_images(self, path, header: int, size: int) -> None:
        """Called by :func:`~ssl_lib.data.store.write_store`: with worker processes, they write the slices there."""
        self._images = (str(path), int(header), int(size))

    def series(self) -> list[tuple[str, Path, list[Path]]]:
        """``(patient folder name, series folder, sorted .dcm files)`` for every series folder (listed once)."""
        if self._series is None:
            found = []
            for patient_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
                for folder, dirs, files in os.walk(patient_dir):
                    dirs.sort()
                    dcm = sorted(Path(folder) / f for f in files if f.lower().endswith(".dcm"))
                    if dcm:
                        found.append((patient_dir.name, Path(folder), dcm))
            self._series = found
        return self._series

    def size_hint(self) -> int:
        return sum(len(files) for _, _, files in self.series())

    def _records(self) -> Iterator[SliceRecord]:
        listing = self.series()
        if not listing:
            raise StoreError(f"{self.root}: no DICOM series found (expected <patient>/<study>/<series>/*.dcm)")
        self.count("patients", len({p for p, _, _ in listing}))
        n = resolve_workers(self.workers, self.size_hint())
        self._slot = 0
        direct = self._images is not None and n > 1 and self._images[2] == self.target_size
        self._direct = (self._images[0], self._images[1]) if direct else None
        with OrderedPool(n) as pool:
            headers = pool.imap(_scan_files, ([[str(f) for f in files]] for _, _, files in listing), window=2 * n)
            for (patient_folder, folder, files), scanned in zip(listing, headers):
                self.count("series")
                yield from self._series_records(pool, patient_folder, folder, files, scanned)

    def _series_records(self, pool: OrderedPool, patient_folder: str, folder: Path, files: list[Path],
                        scanned: list) -> Iterator[SliceRecord]:
        series_key = self.hashed(folder.relative_to(self.root).as_posix())[:12]
        patient_hash = self.hashed(patient_folder)

        def safe_name(i: int) -> str:  # skipped.csv name without the patient folder or file name
            return f"{patient_hash}/{series_key}/file{i:04d}"

        headers = []
        for i, result in enumerate(scanned):
            if isinstance(result, BadSource):
                self.bad(result, safe_name(i))
                continue
            headers.append((i, files[i], *result))
        n_images = sum(len(fr) if isinstance(fr, list) else 1 for *_, fr in headers)
        if len(files) <= self.min_series_images and n_images <= self.min_series_images:
            self.count("skipped_series_small")
            return
        if not headers:
            self.count("skipped_series_unreadable")
            return
        if {mod for _, _, mod, _, _ in headers} != {"CT"}:
            self.count("skipped_series_non_ct")
            return
        usable = []
        for i, path, _, _, frames in headers:
            if isinstance(frames, BadSource):
                self.bad(frames, safe_name(i))
                continue
            if len(frames) > 1:
                self.count("multi_frame_files")
            usable.extend(((i, str(path)), f) for f in frames)
        patient = headers[0][3] or patient_folder
        self.count("series_read")
        ordered = sort_frames(usable)
        size_known = self.target_size is not None
        items = [(path, frame, self._slot + k) for k, ((_, path), frame) in enumerate(ordered)]
        self._slot += len(items)
        results = self._decoded(pool, items)
        for number, (((i, _), _), result) in enumerate(zip(ordered, results)):
            if isinstance(result, BadSource):
                self.bad(result, safe_name(i))
                continue
            pixels, sums = result
            yield SliceRecord(pixels=pixels, patient=patient, label=-1, split="", source=f"{series_key}:{number:04d}",
                              sums=sums if size_known else None, slot=items[number][2] if pixels is None else None)


    def _decoded(self, pool: OrderedPool, items: list[tuple[str, Frame, int]]) -> Iterator:
        """Each item's :func:`decode_slices` result, in the order of ``items``.

        Single-frame files go in jobs of :data:`CHUNK` slices, streamed. A multi-frame (enhanced
        CT) file's frames, wherever they fall along the normal, go into one job of their own, so
        its pixel data is decoded once rather than once per frame (its results are put back in
        order before they are yielded)."""
        if all(frame.index is None for _, frame, _ in items):
            jobs = ((items[k:k + CHUNK], self.hu_range, self.target_size, self._direct)
                    for k in range(0, len(items), CHUNK))
            yield from (r for chunk in pool.imap(decode_slices, jobs) for r in chunk)
            return
        groups: dict[str, list] = {}
        for item in items:
            groups.setdefault(item[0] if item[1].index is not None else "", []).append(item)
        single = groups.pop("", [])
        chunks = list(groups.values()) + [single[k:k + CHUNK] for k in range(0, len(single), CHUNK)]
        by_slot = {}
        jobs = ((chunk, self.hu_range, self.target_size, self._direct) for chunk in chunks)
        for chunk, result in zip(chunks, pool.imap(decode_slices, jobs)):
            by_slot.update((slot, r) for (_, _, slot), r in zip(chunk, result))
        yield from (by_slot[slot] for _, _, slot in items)


def _scan_files(paths: list[str]) -> list:
    """Worker job: the headers of one series' files (:func:`scan_header` or its :class:`BadSource`)."""
    out = []
    for p in paths:
        try:
            out.append(scan_header(p))
        except BadSource as err:
            out.append(err)
    return out
