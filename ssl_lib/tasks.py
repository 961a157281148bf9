"""The three downstream tasks of Wolf et al. 2023 and how their slices split.

* ``covid``: COVID-19 CT Grand Challenge, binary, class 1 = COVID, the given (UCSD) split
  425/118/203 slices.
* ``organs``: OrganSMNIST (MedMNIST), 11 classes, the given split.
* ``brain``: the Brain hemorrhage task, binary, class 1 = hemorrhage; no meaningful given split:
  five-fold cross-validation stratified by class and grouped by patient, 10 % of each training
  fold (by patient, stratified) for validation (paper, "Downstream Tasks").

Runs of a CV task: run ``seed`` uses fold ``seed % n_folds``, so five seeds are the paper's
five folds; every init sees the same fold for the same seed (paired comparisons). The fold
partition itself is fixed by ``cv_seed`` and the store's slice order, and never depends on the run
seed or on the salt of the store's patient hashes (new with every build).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from .data.store import SliceStore, StoreError


@dataclass(frozen=True)
class TaskSpec:
    """One downstream task.

    ``store``: store name under ``StudyPaths.store``; ``kind``: ``"binary"`` | ``"multiclass"``;
    ``positive_class``: the finding's label for binary tasks (F1/AUC are computed for it);
    ``split``: ``"given"`` (the store's train/val/test) or ``"cv"``; ``seed_f1``: which F1 the
    authors' code reports (:func:`ssl_lib.metrics.f1_seed`).
    """

    name: str
    store: str
    kind: str
    class_names: tuple[str, ...]
    positive_class: int | None = 1
    split: str = "given"
    n_folds: int = 5
    val_fraction: float = 0.1
    cv_seed: int = 0
    seed_f1: str = "same"
    paper_name: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


ORGAN_CLASSES = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
                 "liver", "lung-left", "lung-right", "pancreas", "spleen")

TASKS: dict[str, TaskSpec] = {
    "covid": TaskSpec("covid", "covid", "binary", ("NonCOVID", "COVID"), 1, "given",
                      seed_f1="negative_class", paper_name="COVID-19"),
    "organs": TaskSpec("organs", "organs", "multiclass", ORGAN_CLASSES, None, "given",
                       seed_f1="micro", paper_name="OrgMNIST"),
    "brain": TaskSpec("brain", "brain", "binary", ("no hemorrhage", "hemorrhage"), 1, "cv",
                      n_folds=5, val_fraction=0.1, seed_f1="same", paper_name="Brain"),
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    return TASKS[task]


@dataclass(frozen=True)
class Split:
    """Slice indices (into the store) of one run; ``fold`` is ``-1`` for a given split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    fold: int = -1


def fold_of(task: str | TaskSpec, seed: int) -> int:
    """The CV fold run ``seed`` uses (``-1`` for given-split tasks)."""
    spec = get_task(task)
    return seed % spec.n_folds if spec.split == "cv" else -1


def check_store(store: SliceStore, spec: TaskSpec) -> None:
    """Raise :class:`StoreError` if ``store`` cannot serve ``spec`` (task kind, classes)."""
    if store.meta.get("task") not in ("binary", "multiclass"):
        raise StoreError(f"{store.path}: store task is {store.meta.get('task')!r}, task {spec.name!r} needs labels")
    if store.num_classes != spec.num_classes:
        raise StoreError(f"{store.path}: {store.num_classes} classes {store.class_names}, "
                         f"task {spec.name!r} expects {spec.num_classes}")


def _group_kfold(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise StoreError(f"cannot split {n_groups} patient(s) into folds")
    # stratification needs at least k patients of every class: small sets get fewer folds
    per_class = min(len(np.unique(groups[y == c])) for c in np.unique(y))
    k = min(n_splits, n_groups, max(per_class, 2))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups))


def cv_splits(store: SliceStore, spec: TaskSpec) -> list[Split]:
    """All ``n_folds`` CV splits of the labelled slices: patient-grouped, class-stratified.

    Each training fold gives ``val_fraction`` of its patients (stratified) to validation.
    """
    idx = np.flatnonzero(store.labels >= 0)
    # patients as numbers in order of their first slice in the store, not their salted hashes:
    # a store build draws a fresh salt, and folds must not change with it (same slices, same folds)
    y, groups = store.labels[idx], pd.factorize(store.patients[idx])[0]
    out = []
    for k, (rest, test) in enumerate(_group_kfold(y, groups, spec.n_folds, spec.cv_seed)):
        n_val_splits = max(2, int(round(1 / spec.val_fraction)))
        inner = _group_kfold(y[rest], groups[rest], n_val_splits, spec.cv_seed + 1 + k)
        tr, va = inner[0]
        out.append(Split(np.sort(idx[rest][tr]), np.sort(idx[rest][va]), np.sort(idx[test]), k))
    return out


def task_splits(store: SliceStore, task: str | TaskSpec, seed: int = 0, fold: int | None = None) -> Split:
    """Train/val/test indices of run ``seed`` (CV tasks: fold ``seed % n_folds`` unless ``fold``)."""
    spec = get_task(task)
    check_store(store, spec)
    if spec.split == "given":
        s = Split(*(np.flatnonzero((store.manifest["split"].to_numpy() == name) & (store.labels >= 0))
                    for name in ("train", "val", "test")))
        empty = [n for n, v in zip(("train", "val", "test"), (s.train, s.val, s.test)) if len(v) == 0]
        if empty:
            raise StoreError(f"{store.path}: task {spec.name!r} uses the given split but {empty} is empty")
        return s
    if spec.split != "cv":
        raise ValueError(f"task {spec.name!r}: unknown split scheme {spec.split!r}")
    folds = cv_splits(store, spec)
    k = fold_of(spec, seed) if fold is None else fold
    if not 0 <= k < len(folds):
        raise ValueError(f"fold {k} out of range 0..{len(folds) - 1}")
    return folds[k]


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()
