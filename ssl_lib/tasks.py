"""The downstream tasks: the three of Wolf et al. 2023 by default, or any labelled tasks of a user.

* ``covid``: COVID-19 CT Grand Challenge, binary, class 1 = COVID, the given (UCSD) split
  425/118/203 slices.
* ``organs``: OrganSMNIST (MedMNIST), 11 classes, the given split.
* ``brain``: the Brain hemorrhage task, binary, class 1 = hemorrhage; no meaningful given split:
  five-fold cross-validation stratified by class and grouped by patient, 10 % of each training
  fold (by patient, stratified) for validation (paper, "Downstream Tasks").

A study takes any number of labelled tasks through one parameter, ``tasks`` (a JSON list; see
:func:`parse_tasks`): each entry is a paper task by name (``"covid"``) or a user's task
``{"name", "reader", "source", ...}`` with its reader options (labels CSV, window, class names).
Without it the paper's three are the study's tasks. The pre-processing step builds a store per
task and writes the task list to ``<output>/tasks.json`` (no source paths); later steps register
it with :func:`use_study_tasks`, after which :func:`get_task` knows the user's tasks. Tasks not in
the paper get the reduction fractions :data:`USER_FRACTIONS` (100/75/50/25/10 %).

Runs of a CV task: run ``seed`` uses fold ``seed % n_folds``, so five seeds are the paper's
five folds; every init sees the same fold for the same seed (paired comparisons). The fold
partition itself is fixed by ``cv_seed`` and the store's slice order, and never depends on the run
seed or on the salt of the store's patient hashes (new with every build).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from .atomic import atomic_write
from .data.store import SliceStore, StoreError
from .paths import StudyPaths


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
    #: user tasks: the reader kind building the store, its options (no paths), reduction fractions
    reader: str = ""
    fractions: tuple[float, ...] = ()
    source: str = field(default="", compare=False, repr=False)  # a path: never written to an output
    options: dict = field(default_factory=dict, compare=False, hash=False)

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


#: Reduction fractions of tasks that are not the paper's (100/75/50/25/10 % of the training split).
USER_FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.1)
#: Reader kinds a user task may use (those that give labels).
USER_READERS = ("folder", "covid", "medmnist")
_USER: dict[str, TaskSpec] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
TASKS_FILE = "tasks.json"


def get_task(task: str | TaskSpec) -> TaskSpec:
    """A task by name: the paper's, or a user task registered by :func:`use_study_tasks`."""
    if isinstance(task, TaskSpec):
        return task
    if task in TASKS:
        return TASKS[task]
    if task in _USER:
        return _USER[task]
    raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS) + sorted(_USER)} "
                     "(user tasks come from the study's 'tasks' parameter)")


def register(spec: TaskSpec) -> TaskSpec:
    """Make a user task known to :func:`get_task` in this process (and in forked workers)."""
    if spec.name in TASKS and spec != TASKS[spec.name]:
        raise ValueError(f"task name {spec.name!r} is one of the paper's; choose another name")
    _USER[spec.name] = spec
    return spec


def parse_tasks(value) -> list[TaskSpec]:
    """The study's tasks from the ``tasks`` parameter: ``None``/``""``/``[]`` -> the paper's three.

    ``value``: a JSON string or a list; each entry is a paper task's name, or a dict::

        {"name": "liver", "reader": "folder", "source": "/data/liver",   # required
         "labels_csv": "/data/liver/labels.csv", "window": [60, 200],     # reader options
         "class_names": ["no lesion", "lesion"], "split": "cv",          # "cv" or "given"
         "fractions": [1.0, 0.5], "png16": "bits:12"}                    # optional

    ``reader``: ``folder`` (images/DICOM + labels CSV), ``covid`` (COVID-CT layout) or
    ``medmnist`` (``.npz``). ``window``: ``[centre, width]`` HU or ``null`` (interval mapping).
    ``split``: ``"cv"`` (default: 5-fold CV by patient, as the paper's Brain task) or ``"given"``
    (the source's train/val/test). A paper task by name may carry a ``source`` as well.
    Errors name the entry and what is wrong.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return [TASKS[t] for t in TASKS]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"tasks must be a JSON list of task names or objects, got {value[:80]!r} ({exc})") from None
    if isinstance(value, (str, dict)):
        value = [value]
    if not value:
        return [TASKS[t] for t in TASKS]
    specs, seen = [], set()
    for n, entry in enumerate(value, 1):
        spec = _parse_entry(entry, n)
        if spec.name in seen:
            raise ValueError(f"tasks entry {n}: task {spec.name!r} given twice")
        seen.add(spec.name)
        specs.append(spec)
    return specs


def _parse_entry(entry, n: int) -> TaskSpec:
    where = f"tasks entry {n}"
    if isinstance(entry, str):
        if entry not in TASKS:
            raise ValueError(f"{where}: {entry!r} is not a paper task ({sorted(TASKS)}); give a user task as "
                             '{"name": ..., "reader": ..., "source": ...}')
        return TASKS[entry]
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a task name or an object, got {type(entry).__name__}")
    entry = dict(entry)
    name = str(entry.pop("name", "")).strip()
    if name in TASKS:
        source = str(entry.pop("source", "") or "")
        if entry:
            raise ValueError(f"{where}: paper task {name!r} takes only a 'source', not {sorted(entry)}")
        return replace(TASKS[name], source=source)
    if not _NAME.match(name):
        raise ValueError(f"{where}: name {name!r} must be lower-case letters, digits or '_' (up to 32, a letter first)")
    reader = str(entry.pop("reader", entry.pop("kind", "folder")))
    if reader not in USER_READERS:
        raise ValueError(f"{where} ({name}): reader {reader!r} is not one of {USER_READERS}")
    source = str(entry.pop("source", "") or "")
    if not source:
        raise ValueError(f"{where} ({name}): 'source' (the data folder or file) is required")
    class_names = tuple(str(c) for c in entry.pop("class_names", ()) or ())
    split = str(entry.pop("split", "given" if reader in ("covid", "medmnist") else "cv"))
    if split not in ("cv", "given"):
        raise ValueError(f"{where} ({name}): split {split!r} is not 'cv' or 'given'")
    fractions = tuple(float(f) for f in entry.pop("fractions", USER_FRACTIONS))
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"{where} ({name}): fractions must lie in (0, 1], got {list(fractions)}")
    positive = entry.pop("positive_class", 1)
    options = {}
    for key in ("labels_csv", "window", "png16", "masks_root", "hu_range"):
        if key in entry:
            options[key] = entry.pop(key)
    if "window" in options and options["window"] is not None:
        w = options["window"]
        if not (isinstance(w, (list, tuple)) and len(w) == 2 and float(w[1]) > 0):
            raise ValueError(f"{where} ({name}): window must be [centre, width] with width > 0, got {w!r}")
    if entry:
        raise ValueError(f"{where} ({name}): unknown key(s) {sorted(entry)}")
    kind = "binary" if 0 < len(class_names) <= 2 else ("multiclass" if class_names else "")
    return TaskSpec(name, name, kind, class_names, positive if kind != "multiclass" else None, split,
                    seed_f1="same", paper_name="", reader=reader, fractions=fractions, source=source, options=options)


def task_store_path(output_dir: str | os.PathLike, task: str | TaskSpec) -> Path:
    """The folder of ``task``'s slice store in a study: ``StudyPaths(output_dir).store(spec.store)``.

    The one place that maps a task to its store: fine-tuning and Grad-CAM both open it through here.
    """
    return StudyPaths(output_dir).store(get_task(task).store)


def is_user_task(task: str | TaskSpec) -> bool:
    return get_task(task).name not in TASKS


def save_study_tasks(output_dir: str | os.PathLike, specs: Sequence[TaskSpec]) -> Path:
    """Write the study's task list to ``<output>/tasks.json`` (names, kinds, classes, splits: no sources);
    a relative ``output_dir`` is the repository's, as every path of the study (:class:`StudyPaths`)."""
    path = StudyPaths(output_dir).root / TASKS_FILE
    rows = [{"name": s.name, "kind": s.kind, "class_names": list(s.class_names), "positive_class": s.positive_class,
             "split": s.split, "reader": s.reader, "fractions": list(s.fractions), "paper": s.name in TASKS}
            for s in specs]
    return atomic_write(path, json.dumps(rows, indent=2))


def use_study_tasks(output_dir: str | os.PathLike) -> list[str]:
    """Register the study's tasks (``<output>/tasks.json``; absent: the paper's) and return their names in order."""
    path = StudyPaths(output_dir).root / TASKS_FILE
    if not path.is_file():
        return list(TASKS)
    names = []
    for row in json.loads(path.read_text()):
        if row.get("paper"):
            names.append(row["name"])
            continue
        register(TaskSpec(row["name"], row["name"], row["kind"], tuple(row["class_names"]), row.get("positive_class"),
                          row["split"], seed_f1="same", reader=row.get("reader", ""),
                          fractions=tuple(row.get("fractions") or USER_FRACTIONS)))
        names.append(row["name"])
    return names


def task_names(tasks, output_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of ``tasks`` (a list of names, or the ``tasks`` JSON parameter); ``None``: the study's."""
    if tasks is None or (isinstance(tasks, str) and not tasks.strip()) or (isinstance(tasks, (list, tuple)) and not tasks):
        return use_study_tasks(output_dir) if output_dir is not None else list(TASKS)
    if output_dir is not None:
        use_study_tasks(output_dir)
    if isinstance(tasks, (list, tuple)) and all(isinstance(t, str) and (t in TASKS or t in _USER) for t in tasks):
        return list(tasks)
    return [s.name for s in parse_tasks(tasks)]


def task_label(task: str) -> str:
    """How a task is named in tables: the paper's name for the paper's tasks, else its own name."""
    return TASKS[task].paper_name if task in TASKS else task


def order_tasks(names) -> list[str]:
    """The paper's tasks in the paper's order first, then the others as given."""
    names = list(dict.fromkeys(names))
    return [t for t in TASKS if t in names] + [t for t in names if t not in TASKS]


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
    if not spec.class_names:  # a user task without class names takes the store's
        return
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
