"""MedMNIST reader (Yang et al. 2023, MedMNIST v2): one ``.npz`` file with the splits as given.

Layout of ``<flag>.npz`` (e.g. ``organsmnist.npz``: OrganSMNIST, 11 classes, 28x28 uint8)::

    train_images  uint8 (N, H, W) (or (N, H, W, 3), converted to grey)
    train_labels  int   (N, 1)   (or (N,))
    val_images, val_labels, test_images, test_labels    likewise
    train_masks, val_masks, test_masks                   optional, shape of the images, non-zero = inside

The splits are MedMNIST's own (already patient-level). MedMNIST has no patient ids: each slice
is its own patient ``"<split>:<index>"``. ``source`` is ``"<file name>:<split>:<index>"``.

:func:`fetch_medmnist` gets the file with the ``medmnist`` package when it is installed and
online; otherwise it says exactly where to put the downloaded ``.npz``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ssl_lib.data.intensity import to_grey
from ssl_lib.data.readers.base import SourceReader
from ssl_lib.data.store import SPLITS, SliceRecord, StoreError

#: Class names of OrganSMNIST (MedMNIST v2 ``INFO["organsmnist"]["label"]``, in label order).
ORGANS_CLASS_NAMES = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
                      "lung-left", "lung-right", "pancreas", "spleen"]
REQUIRED_KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))


class MedMNISTReader(SourceReader):
    """Labelled slices of a MedMNIST ``.npz`` (all of it is loaded at once: MedMNIST files are small).

    ``path``: the ``.npz`` file. ``masks``: attach ``*_masks`` arrays when present.
    """

    kind = "medmnist"

    def __init__(self, path: str | os.PathLike, *, masks: bool = True, skip_bad: bool = False, salt: str = ""):
        super().__init__(skip_bad=skip_bad, salt=salt)
        self.path = Path(path)
        self.options = {"file": self.path.name, "masks": bool(masks)}
        self.arrays = self._load(self.path, masks)
        labels = np.concatenate([self.arrays[f"{s}_labels"] for s in SPLITS])
        #: number of classes (largest label + 1)
        self.num_classes = int(labels.max()) + 1 if labels.size else 0
        self.counts.update({f"{s}_images": 0 for s in SPLITS})

    @staticmethod
    def _load(path: Path, masks: bool) -> dict[str, np.ndarray]:
        if not path.is_file():
            raise StoreError(f"{path}: MedMNIST file not found")
        try:
            with np.load(path, allow_pickle=False) as npz:
                found = sorted(npz.files)
                missing = [k for k in REQUIRED_KEYS if k not in npz.files]
                if missing:
                    raise StoreError(f"{path}: not a MedMNIST file: missing keys {missing}; keys found: {found} "
                                     f"(expected {list(REQUIRED_KEYS)}, optional *_masks)")
                wanted = list(REQUIRED_KEYS) + [f"{s}_masks" for s in SPLITS if masks and f"{s}_masks" in npz.files]
                arrays = {k: npz[k] for k in wanted}
        except StoreError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise StoreError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc
        for split in SPLITS:
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3, 4)):
                raise StoreError(f"{path}: {split}_images has shape {images.shape}, expected (N, H, W) or (N, H, W, 3)")
            if labels.ndim == 2 and labels.shape[1] != 1:
                raise StoreError(f"{path}: {split}_labels has shape {labels.shape}: multi-label tasks are not supported")
            labels = labels.reshape(-1) if labels.ndim == 2 else labels
            if labels.ndim != 1 or len(labels) != len(images):
                raise StoreError(f"{path}: {split}_labels has shape {arrays[f'{split}_labels'].shape} "
                                 f"but {split}_images has {len(images)} images")
            if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
                raise StoreError(f"{path}: {split}_labels must be non-negative integers, got {labels.dtype}")
            arrays[f"{split}_labels"] = labels.astype(np.int64)
            mask_key = f"{split}_masks"
            if mask_key in arrays and arrays[mask_key].shape[:3] != images.shape[:3]:
                raise StoreError(f"{path}: {mask_key} has shape {arrays[mask_key].shape}, images {images.shape}")
        return arrays

    def _records(self) -> Iterator[SliceRecord]:
        for split in SPLITS:
            images, labels = self.arrays[f"{split}_images"], self.arrays[f"{split}_labels"]
            masks = self.arrays.get(f"{split}_masks")
            for i in range(len(images)):
                img = images[i]
                pixels = img if img.dtype == np.uint8 and img.ndim == 2 else to_grey(img)
                mask = None
                if masks is not None:
                    m = masks[i]
                    mask = ((m if m.ndim == 2 else m.max(axis=-1)) > 0).astype(np.uint8)
                self.count(f"{split}_images")
                yield SliceRecord(pixels=pixels, patient=f"{split}:{i}", label=int(labels[i]), split=split,
                                  source=f"{self.path.name}:{split}:{i}", mask=mask)


def fetch_medmnist(flag: str = "organsmnist", root: str | os.PathLike = ".", *, size: int | None = None) -> Path:
    """Path of ``<root>/<flag>.npz`` (``<flag>_<size>.npz`` for MedMNIST+ sizes), downloading it if needed.

    An existing file is used as is. Otherwise the optional ``medmnist`` package downloads it
    (imported only here); without that package, or offline (medmnist raises ``RuntimeError``),
    a :class:`~ssl_lib.data.store.StoreError` says where to put the file by hand.
    """
    root = Path(root)
    file_name = f"{flag}.npz" if size in (None, 28) else f"{flag}_{size}.npz"
    target = root / file_name
    if target.is_file():
        return target
    how = (f"put {file_name} at {target.resolve()} (download it from https://medmnist.com / "
           f"https://zenodo.org/records/10519652 on a machine with internet access), then run again")
    try:
        import medmnist
    except ImportError as exc:
        raise StoreError(f"{target}: MedMNIST file missing and the 'medmnist' package is not installed; {how}") from exc
    info = getattr(medmnist, "INFO", {}).get(flag)
    if info is None:
        raise StoreError(f"{target}: unknown MedMNIST flag {flag!r}")
    dataset_class = getattr(medmnist, info["python_class"])
    root.mkdir(parents=True, exist_ok=True)
    kwargs = {"split": "train", "download": True, "root": str(root)}
    if size is not None:
        kwargs["size"] = size
    try:
        dataset_class(**kwargs)
    except (RuntimeError, OSError) as exc:
        raise StoreError(f"{target}: MedMNIST download failed (offline?); {how}") from exc
    if not target.is_file():
        raise StoreError(f"{target}: medmnist did not write the file; {how}")
    return target
