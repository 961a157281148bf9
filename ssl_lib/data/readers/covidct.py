"""COVID-CT reader (Yang et al. 2020, UCSD-AI4H/COVID-CT): PNG/JPG slices, binary labels, given splits.

Layout (the repository with ``Images-processed/*.zip`` unpacked)::

    <root>/CT_COVID/*.png|*.jpg          COVID-positive slices   -> label 1 ("COVID")
    <root>/CT_NonCOVID/*.png|*.jpg       COVID-negative slices   -> label 0 ("NonCOVID")
    <root>/Data-split/COVID/{train,val,test}CT_COVID.txt
    <root>/Data-split/NonCOVID/{train,val,test}CT_NonCOVID.txt

(the image folders may also sit in ``<root>/Images-processed/``). Each split file lists one image
file name per line; names may contain ``%`` and spaces, formats mix PNG and JPG, and RGB/RGBA
images are converted to grey with ITU-R 601 luma. The split files decide the split; images in no
split file are skipped and counted (``counts["unlisted_images"]``). A split file naming a missing
image is an error (or skipped and logged with ``skip_bad=True``).

The split files are authoritative (every published COVID-CT result uses them). COVID-CT file
names are figure ids of papers, not people, so the "patient" is a rule over names, the
``patient`` option (:data:`PATIENT_RULES`):

* ``"prefix"`` (default): ``"<class folder>/<name before the first '%'>"``, or the file stem
  when the name has no ``%`` (COVID-CT names panels of one figure ``<id>%<n>.png``);
* ``"name"``: every file is its own patient;
* or a callable ``file_name -> str``.

In the real repository the prefix rule puts one key into two given splits: NonCOVID ``14.png``
is listed for training while ``14%0.jpg`` .. ``14%3.jpg`` are test images, ``33.png`` (train) and
``33%0.jpg`` (val), ... . Such *conflicts* are found before any image is read, listed in
:attr:`CovidCTReader.conflicts` (key and every file with its split; in the store's
``meta["reader"]["conflicts"]``) and counted (``counts["patient_conflicts"]`` keys,
``counts["conflicting_files"]`` files). ``conflicts="keep"`` (default) keeps the official split
and gives the files of a conflicting key one key per split (``"<key>@<split>"``), so the store
still never has a patient key in two splits; ``conflicts="error"`` (strict) refuses them with one
:class:`~ssl_lib.data.store.StoreError` naming every conflicting file and its key.

Optional ``masks_root``: lesion masks at ``<masks_root>/<CT_COVID|CT_NonCOVID>/<file stem>.png``
(non-zero = lesion), attached as ``record.mask``; images without a mask file get none
(``counts["images_without_mask"]``). ``source`` is ``"<class folder>/<file name>"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Union

from ssl_lib.data.readers.base import (IMAGE_SUFFIXES, BadSource, SourceReader, load_grey_image, load_mask,
                                  parse_png16)
from ssl_lib.data.store import SPLITS, SliceRecord, StoreError

#: (class folder, split-file folder, label); label 1 = the finding (COVID).
CLASSES = (("CT_NonCOVID", "NonCOVID", 0), ("CT_COVID", "COVID", 1))
CLASS_NAMES = ["NonCOVID", "COVID"]
#: Patient rules by name (the runner parameter ``covid_patient``).
PATIENT_RULES = ("prefix", "name")
#: What to do when a patient key falls into two given splits (``covid_strict`` -> ``"error"``).
CONFLICT_POLICIES = ("keep", "error")


def default_patient(file_name: str, class_folder: str = "") -> str:
    """``"<class folder>/<part before the first '%'>"`` or ``"<class folder>/<stem>"`` without ``%``."""
    key = file_name.split("%", 1)[0] if "%" in file_name else Path(file_name).stem
    return f"{class_folder}/{key}" if class_folder else key


def name_patient(file_name: str, class_folder: str = "") -> str:
    """``"<class folder>/<file name>"``: every image its own patient."""
    return f"{class_folder}/{file_name}" if class_folder else file_name


PatientRule = Union[str, Callable[[str], str]]


class CovidCTReader(SourceReader):
    """Labelled slices of the COVID-CT layout, split as its ``Data-split`` files say.

    ``root``: the repository folder. ``split_root``: the ``Data-split`` folder (default
    ``<root>/Data-split``). ``patient``: ``"prefix"`` | ``"name"`` | callable file name -> raw
    patient key (``patient_of`` is the older name of the callable form). ``conflicts``:
    ``"keep"`` | ``"error"`` (see the module docs). ``masks_root``: optional lesion masks.
    ``png16``: mapping of 16-bit grey images (:func:`~ssl_lib.data.readers.load_grey_image`).
    """

    kind = "covid"

    def __init__(self, root: str | os.PathLike, *, split_root: str | os.PathLike | None = None,
                 masks_root: str | os.PathLike | None = None, patient: PatientRule = "prefix",
                 patient_of: Callable[[str], str] | None = None, conflicts: str = "keep",
                 png16: str | None = None, skip_bad: bool = False, salt: str = ""):
        super().__init__(skip_bad=skip_bad, salt=salt)
        if patient_of is not None:
            patient = patient_of
        if not callable(patient) and patient not in PATIENT_RULES:
            raise ValueError(f"unknown COVID-CT patient rule {patient!r}; choose one of {PATIENT_RULES} or pass a callable")
        if conflicts not in CONFLICT_POLICIES:
            raise ValueError(f"unknown conflict policy {conflicts!r}; choose one of {CONFLICT_POLICIES}")
        self.png16 = parse_png16(png16)
        root = Path(root)
        if not root.is_dir():
            raise StoreError(f"{root}: COVID-CT folder not found")
        image_root = root
        if not (root / "CT_COVID").is_dir() and (root / "Images-processed" / "CT_COVID").is_dir():
            image_root = root / "Images-processed"
        self.image_root = image_root
        self.split_root = Path(split_root) if split_root is not None else root / "Data-split"
        self.masks_root = Path(masks_root) if masks_root is not None else None
        self.patient = patient
        for folder, _, _ in CLASSES:
            if not (image_root / folder).is_dir():
                raise StoreError(f"{image_root / folder}: image folder missing (expected CT_COVID/ and CT_NonCOVID/ "
                                 f"under {root} or {root / 'Images-processed'})")
        self.options = {"patient": patient if isinstance(patient, str) else getattr(patient, "__name__", "custom"),
                        "conflicts": conflicts, "masks": masks_root is not None,
                        "split_root_given": split_root is not None,
                        "png16": None if png16 is None else str(self.png16)}
        self.counts.update(images=0, unlisted_images=0, images_without_mask=0, duplicate_entries=0,
                           patient_conflicts=0, conflicting_files=0)
        self.entries = self._read_split_files()
        self.conflicts = self._find_conflicts()
        self.count("patient_conflicts", len(self.conflicts))
        self.count("conflicting_files", sum(len(c["files"]) for c in self.conflicts))
        if self.conflicts and conflicts == "error":
            lines = [f"  key {c['key']!r}: " + ", ".join(f"{f} ({sp})" for sp, f in c["files"]) for c in self.conflicts]
            raise StoreError(
                f"{self.split_root}: the patient rule {self.options['patient']!r} puts {len(self.conflicts)} key(s) "
                f"into more than one of the given splits ({self.counts['conflicting_files']} files); every "
                "conflicting file and its key:\n" + "\n".join(lines) +
                "\n(use the patient rule 'name', or drop strict mode to keep the official split)")
        self._split_key = {(c["key"], sp) for c in self.conflicts for sp, _ in c["files"]}

    def patient_key(self, name: str, class_folder: str) -> str:
        """Raw patient key of one listed file under the patient rule (before conflict handling)."""
        if callable(self.patient):
            return str(self.patient(name))
        return (default_patient if self.patient == "prefix" else name_patient)(name, class_folder)

    def _find_conflicts(self) -> list[dict]:
        """Keys the patient rule puts into two given splits: ``[{"key", "files": [(split, file), ...]}]``."""
        files: dict[str, list[tuple[str, str]]] = {}
        splits: dict[str, set[str]] = {}
        for split, class_folder, _, name, _ in self.entries:
            key = self.patient_key(name, class_folder)
            files.setdefault(key, []).append((split, f"{class_folder}/{name}"))
            splits.setdefault(key, set()).add(split)
        return [{"key": key, "files": sorted(files[key], key=lambda t: (SPLITS.index(t[0]), t[1]))}
                for key in sorted(files) if len(splits[key]) > 1]

    def summary(self) -> dict:
        """As :meth:`SourceReader.summary`, plus ``conflicts`` (COVID-CT names are figure ids, not people)."""
        out = super().summary()
        out["conflicts"] = [{"key": c["key"], "files": [list(f) for f in c["files"]]} for c in self.conflicts]
        return out

    def split_file(self, split_folder: str, class_folder: str, split: str) -> Path:
        return self.split_root / split_folder / f"{split}{class_folder}.txt"

    def _read_split_files(self) -> list[tuple[str, str, int, str, Path]]:
        """``(split, class folder, label, file name, split file)`` for every listed image."""
        entries = []
        for class_folder, split_folder, label in CLASSES:
            for split in SPLITS:
                path = self.split_file(split_folder, class_folder, split)
                if not path.is_file():
                    raise StoreError(f"{path}: split file missing (expected Data-split/{split_folder}/{{train,val,test}}{class_folder}.txt)")
                try:
                    lines = path.read_text(encoding="utf-8-sig").splitlines()
                except (OSError, UnicodeDecodeError) as exc:
                    raise StoreError(f"{path}: split file unreadable ({exc})") from exc
                for line in lines:
                    if not line.strip():
                        continue
                    name = line if (self.image_root / class_folder / line).is_file() else line.strip()
                    entries.append((split, class_folder, label, name, path))
        return entries

    def _records(self) -> Iterator[SliceRecord]:
        listed: dict[str, dict[str, Path]] = {folder: {} for folder, _, _ in CLASSES}
        for split, class_folder, label, name, split_path in self.entries:
            if name in listed[class_folder]:
                first = listed[class_folder][name]
                if first != split_path:
                    self.bad(BadSource(self.image_root / class_folder / name,
                                       f"listed in two split files ({self._short(first)} and {self._short(split_path)})"),
                             f"{class_folder}/{name}")
                self.count("duplicate_entries")
                continue
            listed[class_folder][name] = split_path
            image_path = self.image_root / class_folder / name
            if not image_path.is_file():
                self.bad(BadSource(image_path, f"listed in split file {self._short(split_path)} but the image is missing",
                                   f"split file: {split_path}"), f"{class_folder}/{name}")
                continue
            try:
                pixels = load_grey_image(image_path, png16=self.png16)
                mask = self._mask(class_folder, name, pixels.shape)
            except BadSource as err:
                self.bad(err, f"{class_folder}/{name}")
                continue
            patient = self.patient_key(name, class_folder)
            if (patient, split) in self._split_key:
                patient = f"{patient}@{split}"
            self.count("images")
            yield SliceRecord(pixels=pixels, patient=str(patient), label=label, split=split,
                              source=f"{class_folder}/{name}", mask=mask)
        for class_folder, names in listed.items():
            for f in (self.image_root / class_folder).iterdir():
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and f.name not in names:
                    self.count("unlisted_images")

    def _short(self, split_path: Path) -> str:
        """A split file named relative to ``split_root`` (skip reasons carry no absolute paths)."""
        return f"{self.split_root.name}/{split_path.relative_to(self.split_root).as_posix()}"

    def _mask(self, class_folder: str, name: str, shape: tuple[int, int]):
        if self.masks_root is None:
            return None
        path = self.masks_root / class_folder / f"{Path(name).stem}.png"
        if not path.is_file():
            self.count("images_without_mask")
            return None
        return load_mask(path, shape)
