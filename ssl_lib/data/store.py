"""The slice store: the one format every step after pre-processing reads.

A store is a folder::

    images.npy      uint8 (N, H, W), memory-mapped on read; decoded and resized once, here
    masks.npy       uint8 (N, H, W) lesion/organ masks (0/1), only where the source had masks
    manifest.csv    one row per slice: index, patient (one-way hash), label, split, source
    meta.json       name, task, class names, image size, dataset mean/std (of pixels/255),
                    counts per split and class, reader options, what was skipped
    skipped.csv     files the reader skipped (only with an explicit skip option), and why

A store is complete or absent: it is written into a temporary sibling folder
``.<name>.tmp-<host>-<pid>-<random>`` and renamed into place at the end; a build first removes
such folders of the same store left by earlier builds that were killed (same host, process gone,
:func:`remove_stale_temp`). No DICOM identifier (name, ID, dates, UIDs) is written: readers hand raw patient
identifiers to :func:`write_store`, which keeps only a salted one-way hash of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import SslCtError

SPLITS = ("train", "val", "test")
#: Default patient-level split fractions (train, val, test) when a source gives none.
DEFAULT_SPLIT = (0.7, 0.1, 0.2)
MANIFEST_COLUMNS = ["index", "patient", "label", "split", "source"]


class StoreError(SslCtError, ValueError):
    """A source or store is unusable; the message names the file and what is wrong."""


@dataclass
class SliceRecord:
    """One decoded slice as a reader yields it.

    ``pixels``: uint8 ``(H, W)`` after intensity mapping, at the source's own size.
    ``patient``: the raw patient identifier; only its salted hash leaves :func:`write_store`.
    ``label``: class index, ``-1`` for unlabeled slices. ``split``: one of :data:`SPLITS`, or
    ``""`` to let the writer split by patient. ``source``: a non-identifying description of where
    the slice came from (relative file name for PNG/npz sources, a hash for DICOM).
    ``mask``: optional ``(H, W)`` lesion/organ mask (non-zero = inside). ``sums``: optional
    ``(sum, sum of squares)`` of the grey values when a worker process computed them already
    (:func:`grey_sums`; only used when ``pixels`` is at the store's size).
    """

    pixels: np.ndarray
    patient: str
    label: int = -1
    split: str = ""
    source: str = ""
    mask: np.ndarray | None = None
    sums: tuple[int, int] | None = None
    #: set when a worker process already wrote the (size x size) pixels into ``images.npy`` at this
    #: slot (see ``bind_images`` in :func:`write_store`); ``pixels`` is then ``None`` and ``sums`` given
    slot: int | None = None


def grey_sums(pixels: np.ndarray) -> tuple[int, int]:
    """``(sum, sum of squares)`` of a uint8 image's grey values, exact integers (float64 holds them
    exactly, so the BLAS dot product is exact in any summation order): the dataset mean/std."""
    f = np.asarray(pixels).ravel().astype(np.float64)
    return int(f.sum()), int(f @ f)


@dataclass
class SkipLog:
    """Files a reader skipped (with ``skip_bad=True``) and why; written to ``skipped.csv``."""

    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str | os.PathLike, reason: str) -> None:
        self.rows.append((str(path), reason))

    def __len__(self) -> int:
        return len(self.rows)


# ----------------------------------------------------------------------------------------------
# .npy streaming writer: a fixed-size header rewritten with the final shape at the end, so that
# an unknown number of slices streams to disk without holding them in memory or copying twice.
_HEADER_LEN = 128


def _npy_header(shape: tuple[int, ...]) -> bytes:
    d = "{'descr': '|u1', 'fortran_order': False, 'shape': %r, }" % (tuple(shape),)
    body_len = _HEADER_LEN - 10  # magic (6) + version (2) + uint16 length (2)
    d = d.ljust(body_len - 1) + "\n"
    if len(d) != body_len:
        raise ValueError("shape too large for the fixed .npy header")
    return b"\x93NUMPY\x01\x00" + np.uint16(body_len).tobytes() + d.encode("latin1")


class _NpyStream:
    def __init__(self, path: Path, hw: tuple[int, int]):
        self.path, self.hw, self.n = path, hw, 0
        self.moves: list[tuple[int, int]] = []  # (slot, index) of slices written by workers behind holes
        self.direct = False
        self.fh = open(path, "w+b")
        self.fh.write(_npy_header((0, *hw)))

    def append(self, arr: np.ndarray) -> None:
        assert arr.dtype == np.uint8 and arr.shape == self.hw and not self.moves and not self.direct
        self.fh.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
        self.n += 1

    def placed(self, slot: int) -> None:
        """The next slice was written by a worker at ``slot`` (>= its index: skipped slices leave holes)."""
        self.direct = True
        if slot < self.n:
            raise StoreError(f"slot {slot} written twice")
        if slot != self.n:
            self.moves.append((slot, self.n))
        self.n += 1

    def close(self) -> None:
        frame = self.hw[0] * self.hw[1]
        for slot, index in self.moves:  # close the holes of skipped slices, in order
            self.fh.seek(_HEADER_LEN + slot * frame)
            data = self.fh.read(frame)
            self.fh.seek(_HEADER_LEN + index * frame)
            self.fh.write(data)
        self.fh.truncate(_HEADER_LEN + self.n * frame)
        self.fh.seek(0)
        self.fh.write(_npy_header((self.n, *self.hw)))
        self.fh.close()


def resize_slice(pixels: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """uint8 ``(H, W)`` -> uint8 ``(size, size)``; antialiased bilinear, or nearest for masks."""
    if pixels.shape == (size, size):
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    if nearest:
        out = F.interpolate(t, size=(size, size), mode="nearest-exact")
    else:
        out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].round_().clamp_(0, 255).to(torch.uint8).numpy()


def patient_key(raw: str, salt: str) -> str:
    """Salted one-way hash of a raw patient identifier (16 hex digits)."""
    return hashlib.sha256(f"{salt}\x00{raw}".encode("utf-8")).hexdigest()[:16]


def patient_split(
    patients: Sequence[str],
    labels: Sequence[int],
    fractions: tuple[float, float, float] = DEFAULT_SPLIT,
    seed: int = 0,
) -> dict[str, str]:
    """Assign whole patients to train/val/test, stratified by each patient's majority label.

    ``patients`` and ``labels`` are per slice; returns ``{patient: split}``. Patients are
    shuffled with ``seed`` and dealt to the splits class by class, so every split gets close to
    ``fractions`` of each class's patients.
    """
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    frame = pd.DataFrame({"patient": list(patients), "label": list(labels)})
    majority = frame.groupby("patient", sort=False)["label"].agg(lambda s: s.value_counts().idxmax())
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for _, group in majority.groupby(majority, sort=True):
        members = group.index.to_numpy()
        members = members[rng.permutation(len(members))]
        bounds = np.rint(np.cumsum(fractions) * len(members)).astype(int)
        for i, p in enumerate(members):
            out[p] = SPLITS[int(np.searchsorted(bounds, i, side="right"))]
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _temp_prefix(out: Path) -> str:
    return f".{out.name}.tmp-"


def remove_stale_temp(out: str | os.PathLike) -> list[str]:
    """Remove ``.<name>.tmp-<host>-<pid>-*`` folders of store ``out`` whose build process is gone.

    Only folders written on this host by a process that no longer runs are removed (a build
    still running, or one on another host sharing the disk, keeps its folder); returns their names.
    """
    import socket

    out = Path(out)
    host = socket.gethostname().replace("-", "_")
    removed = []
    if not out.parent.is_dir():
        return removed
    prefix = _temp_prefix(out)
    for entry in out.parent.iterdir():
        if not (entry.name.startswith(prefix) and entry.is_dir()):
            continue
        parts = entry.name[len(prefix):].split("-")
        if len(parts) < 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if not _pid_alive(int(parts[1])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _make_temp(out: Path) -> Path:
    import socket

    host = socket.gethostname().replace("-", "_")
    return Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(out)}{host}-{os.getpid()}-", dir=out.parent))


def write_store(
    records: Iterable[SliceRecord],
    out: str | os.PathLike,
    *,
    size: int,
    name: str,
    task: str = "unlabeled",
    class_names: Sequence[str] = (),
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT,
    split_seed: int = 0,
    salt: str | None = None,
    skipped: SkipLog | None = None,
    reader: dict | None = None,
    extra_meta: dict | None = None,
    overwrite: bool = False,
    progress: bool = False,
    total: int | None = None,
) -> "SliceStore":
    """Stream ``records`` into a new store folder ``out`` (complete or absent) and open it.

    Slices are resized to ``size × size``. Records with ``split == ""`` are split by patient
    (:func:`patient_split`); given splits are kept, but a patient found in two splits is an
    error. ``salt`` keys the patient hash (random, and not stored, when ``None``; pass the same
    salt to link patients across stores). ``extra_meta`` is merged into ``meta.json`` (written
    with the store, so it is as complete as the store). ``total``: expected slice count for the
    progress bar.
    """
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise StoreError(f"{out}: a store already exists here (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(16) if salt is None else salt
    remove_stale_temp(out)
    tmp = _make_temp(out)
    try:
        images = _NpyStream(tmp / "images.npy", (size, size))
        masks: _NpyStream | None = None
        rows: list[tuple] = []
        raw_patients: list[str] = []
        s1 = s2 = 0  # exact integer sums of grey values and their squares: mean/std independent of order
        bind = getattr(records, "bind_images", None)
        if bind is not None:  # a reader whose worker processes write the slices straight into images.npy
            bind(tmp / "images.npy", _HEADER_LEN, size)
        for i, rec in enumerate(_with_progress(records, progress, name, total)):
            if rec.slot is not None:
                if rec.sums is None or rec.mask is not None:
                    raise StoreError(f"{rec.source}: a slice written by a worker needs its sums and no mask")
                images.placed(rec.slot)
                s1, s2 = s1 + rec.sums[0], s2 + rec.sums[1]
                raw_patients.append(rec.patient)
                rows.append((i, patient_key(rec.patient, salt), int(rec.label), rec.split, rec.source))
                continue
            if rec.pixels.dtype != np.uint8 or rec.pixels.ndim != 2:
                raise StoreError(f"{rec.source}: reader produced {rec.pixels.dtype} {rec.pixels.shape}, expected uint8 (H, W)")
            if rec.split not in ("",) + SPLITS:
                raise StoreError(f"{rec.source}: unknown split {rec.split!r}")
            img = resize_slice(rec.pixels, size)
            images.append(img)
            a, b = rec.sums if rec.sums is not None and rec.pixels.shape == (size, size) else grey_sums(img)
            s1, s2 = s1 + a, s2 + b
            if rec.mask is not None and masks is None:
                masks = _NpyStream(tmp / "masks.npy", (size, size))
                for _ in range(i):  # earlier slices had no mask: empty
                    masks.append(np.zeros((size, size), np.uint8))
            if masks is not None:
                m = np.zeros((size, size), np.uint8) if rec.mask is None else resize_slice(
                    (np.asarray(rec.mask) > 0).astype(np.uint8), size, nearest=True)
                masks.append(m)
            raw_patients.append(rec.patient)
            rows.append((i, patient_key(rec.patient, salt), int(rec.label), rec.split, rec.source))
        images.close()
        if masks is not None:
            masks.close()
        if not rows:
            raise StoreError(f"{name}: the source yielded no slices")
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        manifest = _assign_splits(manifest, raw_patients, split_fractions, split_seed, task)
        manifest.to_csv(tmp / "manifest.csv", index=False)
        n_pix = len(rows) * size * size
        mean = s1 / 255.0 / n_pix
        std = float(np.sqrt(max(s2 / 255.0**2 / n_pix - mean**2, 1e-12)))
        meta = {
            "name": name,
            "task": task,
            "class_names": list(class_names),
            "num_slices": len(rows),
            "num_patients": int(manifest["patient"].nunique()),
            "image_size": size,
            "mean": float(mean),
            "std": std,
            "has_masks": masks is not None,
            "counts": _counts(manifest, class_names),
            "skipped": len(skipped) if skipped is not None else 0,
            "reader": reader or {},
            **(extra_meta or {}),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if skipped is not None and len(skipped):
            pd.DataFrame(skipped.rows, columns=["file", "reason"]).to_csv(tmp / "skipped.csv", index=False)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SliceStore(out)


def _with_progress(records: Iterable[SliceRecord], progress: bool, name: str,
                   total: int | None = None) -> Iterator[SliceRecord]:
    if not progress:
        yield from records
        return
    from tqdm.auto import tqdm

    yield from tqdm(records, desc=f"store {name}", unit="slice", total=total)


def _assign_splits(manifest: pd.DataFrame, raw_patients: list[str], fractions, seed, task) -> pd.DataFrame:
    given = manifest["split"] != ""
    if given.any():
        per_patient = manifest.loc[given].groupby("patient")["split"].nunique()
        crossing = per_patient[per_patient > 1]
        if len(crossing):
            lines = []
            for key in crossing.index:
                rows = manifest.loc[given & (manifest["patient"] == key)]
                lines.append(f"  patient {key}: " + "; ".join(
                    f"{split}: {', '.join(group['source'])}" for split, group in rows.groupby("split", sort=False)))
            raise StoreError(
                f"{len(crossing)} patient(s) appear in more than one of the given splits; a patient must never "
                "cross train/val/test. The slices involved (patient key: split: source):\n" + "\n".join(lines))
    todo = ~given
    if todo.any():
        raw = np.asarray(raw_patients, dtype=object)
        assignment = patient_split(raw[todo.to_numpy()], manifest.loc[todo, "label"].to_numpy(), fractions, seed)
        manifest.loc[todo, "split"] = [assignment[p] for p in raw[todo.to_numpy()]]
        # a patient with some slices given a split and others not: follow the given split
        known = manifest.loc[given].groupby("patient")["split"].first()
        clash = manifest["patient"].isin(known.index) & todo
        manifest.loc[clash, "split"] = manifest.loc[clash, "patient"].map(known)
    return manifest


def _counts(manifest: pd.DataFrame, class_names: Sequence[str]) -> dict:
    counts: dict[str, dict[str, int]] = {}
    for split, group in manifest.groupby("split"):
        vc = group["label"].value_counts().sort_index()
        counts[str(split)] = {
            (class_names[k] if 0 <= k < len(class_names) else str(k)): int(v) for k, v in vc.items()
        }
    return counts


class SliceStore:
    """Read side of a store folder: memory-mapped slices, manifest and metadata.

    ``images``: ``np.memmap`` uint8 ``(N, H, W)``; ``masks``: the same or ``None``;
    ``manifest``: :class:`pandas.DataFrame` with :data:`MANIFEST_COLUMNS`; ``meta``: dict.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise StoreError(f"{self.path}: not a slice store (no meta.json); build it with the pre-processing step first")
        self.meta = json.loads(meta_file.read_text())
        self.images = np.load(self.path / "images.npy", mmap_mode="r")
        self.masks = np.load(self.path / "masks.npy", mmap_mode="r") if (self.path / "masks.npy").exists() else None
        self.manifest = pd.read_csv(self.path / "manifest.csv", dtype={"patient": str, "split": str, "source": str},
                                    keep_default_na=False)
        if len(self.manifest) != len(self.images):
            raise StoreError(f"{self.path}: manifest has {len(self.manifest)} rows but images.npy {len(self.images)} slices")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"SliceStore({self.path}, n={len(self)}, size={self.image_size}, task={self.meta['task']})"

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def mean(self) -> float:
        return float(self.meta["mean"])

    @property
    def std(self) -> float:
        return float(self.meta["std"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def synthetic(self) -> bool:
        """Whether the store was built from the built-in synthetic data: its meta's ``synthetic`` flag, nothing else."""
        return self.meta.get("synthetic") is True

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self) -> np.ndarray:
        return self.manifest["label"].to_numpy()

    @property
    def patients(self) -> np.ndarray:
        return self.manifest["patient"].to_numpy()

    def split_indices(self, split: str | None = None) -> np.ndarray:
        """Slice indices of one split (``None``: all slices)."""
        if split is None:
            return np.arange(len(self))
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.manifest["split"].to_numpy() == split)

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 ``(B, H, W)`` for ``indices``, read in ascending order (sequential disk access)."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), *self.images.shape[1:]), dtype=np.uint8)
        out[order] = self.images[idx[order]]
        return out

    def dataset(self, indices: Sequence[int] | np.ndarray | None = None, *, with_masks: bool = False) -> "SliceDataset":
        return SliceDataset(self, self.split_indices() if indices is None else indices, with_masks=with_masks)


class SliceDataset(torch.utils.data.Dataset):
    """Batches straight from the memory-mapped store, no per-sample Python work.

    Item ``i`` is ``(uint8 (1, H, W), label)``; the DataLoader fetches whole batches through
    :meth:`__getitems__`, giving ``(uint8 (B, 1, H, W), int64 (B,))`` (plus ``uint8 (B, 1, H, W)``
    masks with ``with_masks``). Normalisation and augmentation happen later on the batch tensor
    (on the GPU when there is one); see :func:`make_loader`.
    """

    def __init__(self, store: SliceStore, indices: Sequence[int] | np.ndarray, *, with_masks: bool = False):
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = store.labels[self.indices]
        if with_masks and store.masks is None:
            raise StoreError(f"{store.path}: this store has no masks")
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, positions: list[int]):
        pos = np.asarray(positions, dtype=np.int64)
        idx = self.indices[pos]
        images = torch.from_numpy(self.store.read(idx)).unsqueeze(1)
        labels = torch.from_numpy(self.labels[pos].astype(np.int64))
        if self.with_masks:
            order = np.argsort(idx, kind="stable")
            masks = np.empty((len(idx), *self.store.masks.shape[1:]), np.uint8)
            masks[order] = self.store.masks[idx[order]]
            return images, labels, torch.from_numpy(masks).unsqueeze(1)
        return images, labels


def _identity_collate(batch):
    return batch


def make_loader(
    dataset: SliceDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    drop_last: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A standard DataLoader over a :class:`SliceDataset` that fetches whole batches at once.

    It keeps the usual ``batch_size``/``shuffle`` form, so Lightning can swap in a
    ``DistributedSampler`` under DDP.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=_identity_collate,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def normalize_batch(images: torch.Tensor, mean: float, std: float, channels: int = 3) -> torch.Tensor:
    """uint8 ``(B, 1, H, W)`` -> float ``(B, channels, H, W)``: ``(x/255 - mean)/std``.

    Grey slices are repeated to ``channels`` (a view, no copy), as the paper feeds CT slices to
    a standard 3-channel ResNet50.
    """
    x = images.float().div_(255.0).sub_(mean).div_(std)
    return x.expand(-1, channels, -1, -1) if channels != 1 else x


def export_png(store: SliceStore, folder: str | os.PathLike, indices: Sequence[int] | None = None) -> Path:
    """Write slices as ``<patient key>_<index>.png`` (the paper's pre-training format)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    idx = store.split_indices() if indices is None else np.asarray(indices)
    for i in idx:
        key = store.manifest.at[int(i), "patient"]
        Image.fromarray(np.asarray(store.images[int(i)])).save(folder / f"{key}_{int(i)}.png")
    return folder
