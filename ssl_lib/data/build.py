"""Build a slice store from a source: pick the reader for the layout, set the task, write the store.

``build_store("lidc", "/data/LIDC-IDRI", out, size=224)`` reads the source once with the reader
of :mod:`ssl_lib.data.readers` and streams its records into
:func:`ssl_lib.data.store.write_store`; the store is complete or absent. Tasks and class names
follow the project conventions (label 1 = the finding):

==========  ============  ==================================================================
kind        task          class names
==========  ============  ==================================================================
lidc        unlabeled     ``[]``
covid       binary        ``["NonCOVID", "COVID"]``
medmnist    multiclass    OrganSMNIST/OrganAMNIST/OrganCMNIST's 11 organs, else ``"0".."K-1"``
folder      binary if <= 2 classes, else multiclass; ``class_names`` or ``"0".."K-1"``
==========  ============  ==================================================================

``meta["reader"]`` records the kind, the reader's options (no paths: a source path may name a
patient) and its counts (slices, skipped series/files and why); with ``skip_bad=True`` the skipped
files and reasons go to ``skipped.csv`` beside the store.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Sequence

from ssl_lib.data.readers import READERS, SourceReader
from ssl_lib.data.readers.covidct import CLASS_NAMES as COVID_CLASS_NAMES
from ssl_lib.data.readers.medmnist import ORGANS_CLASS_NAMES, fetch_medmnist
from ssl_lib.data.store import DEFAULT_SPLIT, SliceStore, StoreError, write_store

KINDS = tuple(READERS)


def make_reader(kind: str, source: str | os.PathLike, *, skip_bad: bool = False, salt: str = "",
                **reader_options) -> SourceReader:
    """The reader of ``kind`` for ``source`` (for ``"medmnist"`` a ``.npz`` file, or a folder
    holding ``<flag>.npz``, fetched with :func:`fetch_medmnist` when missing)."""
    if kind not in READERS:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {KINDS}")
    if kind == "medmnist" and Path(source).is_dir():
        source = fetch_medmnist(reader_options.pop("flag", "organsmnist"), source, size=reader_options.pop("npz_size", None))
    else:
        reader_options.pop("flag", None), reader_options.pop("npz_size", None)
    try:
        return READERS[kind](source, skip_bad=skip_bad, salt=salt, **reader_options)
    except TypeError as exc:
        raise ValueError(f"invalid option for the {kind!r} reader: {exc}") from exc


def task_of(reader: SourceReader, class_names: Sequence[str] | None = None) -> tuple[str, list[str]]:
    """``(task, class_names)`` of the store a reader fills."""
    if reader.kind == "lidc":
        return "unlabeled", []
    if reader.kind == "covid":
        names = list(class_names) if class_names else list(COVID_CLASS_NAMES)
        if len(names) != 2:
            raise ValueError(f"the COVID task has 2 classes, got class_names={names}")
        return "binary", names
    k = int(getattr(reader, "num_classes", 0))
    if class_names:
        names = list(class_names)
        if len(names) < k:
            raise ValueError(f"{len(names)} class names given but the labels go up to {k - 1}")
    elif reader.kind == "medmnist" and k == len(ORGANS_CLASS_NAMES) and reader.path.name.lower().startswith("organ"):
        names = list(ORGANS_CLASS_NAMES)
    else:
        names = [str(i) for i in range(max(k, 2))]
    return ("binary" if len(names) <= 2 else "multiclass"), names


def build_store(
    kind: str,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int,
    skip_bad: bool = False,
    salt: str | None = None,
    split_seed: int = 0,
    progress: bool = False,
    name: str | None = None,
    class_names: Sequence[str] | None = None,
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT,
    overwrite: bool = False,
    extra_meta: dict | None = None,
    **reader_options,
) -> SliceStore:
    """Read ``source`` (layout ``kind`` in ``{"lidc", "covid", "medmnist", "folder"}``) into a store at ``out``.

    ``size``: slices are resized to ``size x size``. ``skip_bad``: skip unusable files (listed in
    ``skipped.csv``) instead of stopping at the first. ``salt``: key of the patient hash (random and
    unstored when ``None``; pass one to link patients across stores). ``split_seed``,
    ``split_fractions``: patient-level split of records without a given split. ``name``: store name
    (default: the folder name of ``out``). ``class_names``: for ``folder``/``medmnist`` sources.
    ``reader_options`` go to the reader (e.g. ``window=None`` for ``folder``, ``masks_root=...``,
    ``patient_of=...`` for ``covid``, ``flag="organsmnist"`` for a ``medmnist`` folder).
    ``extra_meta``: merged into the store's ``meta.json``.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out}: a store already exists here (pass overwrite=True to replace it)")
    salt = secrets.token_hex(16) if salt is None else salt
    reader = make_reader(kind, source, skip_bad=skip_bad, salt=salt, **reader_options)
    task, names = task_of(reader, class_names)
    reader.target_size = size  # readers with worker processes resize there
    info = reader.summary()
    info["skip_bad"] = bool(skip_bad)
    store = write_store(
        reader,
        out,
        size=size,
        name=name or out.name,
        task=task,
        class_names=names,
        split_fractions=split_fractions,
        split_seed=split_seed,
        salt=salt,
        skipped=reader.skipped,
        reader=info,
        extra_meta=extra_meta,
        overwrite=overwrite,
        progress=progress,
        total=reader.size_hint() if progress else None,
    )
    return store


__all__ = ["build_store", "make_reader", "task_of", "KINDS"]
