"""The results layer: what a fine-tuning run leaves on disk, and how every later step reads it.

Wolf et al. 2023 report each downstream run by its test metrics (Tables 2-3, Figure 5); the
study keeps, per run, one row of the results table plus its per-epoch curves and per-slice test
predictions. This module is the one home of their names, layout and readers/writers, so that
fine-tuning (:mod:`ssl_lib.finetune`, :mod:`ssl_lib.cluster`) writes what the report, the
statistics and Grad-CAM (:mod:`ssl_lib.report`, :mod:`ssl_lib.stats`, :mod:`ssl_lib.explain`)
read, without those importing the trainer. It imports no torch (a test checks it).

- the schema: :data:`RESULT_COLUMNS` (one row per run) and :data:`RUN_KEY` (what identifies a run);
- names and files: :func:`run_name` (``f{fraction}_s{seed}[_k{fold}]``) and :func:`run_file`
  (``finetune/<kind>/<task>/<init>/<run>.<ext>``, kinds :data:`RUN_KINDS`);
- the results table ``finetune/results.csv``: :func:`read_results`, :func:`load_results` (one row
  per run key, the last counts), :func:`append_result` (one row), :func:`write_row_file` /
  :func:`merge_row_files` (a cluster job's row file, merged once by its key);
- predictions ``index, label, pred, prob_0..prob_{C-1}`` (one row per test slice):
  :func:`write_predictions`, :func:`load_predictions`, :func:`prediction_probs`;
- curves (one row per epoch): :func:`write_curves`, :func:`load_curves`.

Every file is written atomically (:mod:`ssl_lib.atomic`): a reader sees the old file or the new
one, never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .errors import SslCtError
from .paths import StudyPaths

__all__ = ["RESULT_COLUMNS", "RUN_KEY", "RUN_KINDS", "ResultsError", "append_result", "load_curves",
           "load_predictions", "load_results", "merge_row_files", "prediction_probs", "read_results",
           "result_frame", "run_file", "run_key", "run_name", "write_curves", "write_predictions",
           "write_row_file"]

#: The columns of the results table, in order (extra columns of a row follow them).
RESULT_COLUMNS = ["task", "init", "pretrain_epoch", "fraction", "seed", "fold", "best_epoch", "accuracy", "auc", "f1",
                  "f1_seed", "val_accuracy", "val_auc", "val_f1", "train_size", "train_per_class", "val_size",
                  "test_size", "time_s", "profile", "arch", "image_size", "synthetic"]
#: The columns that identify a run (a grid skips runs whose key is in the table already).
RUN_KEY = ["task", "init", "fraction", "seed", "fold", "profile"]
#: A run's files by kind, and their extensions.
RUN_KINDS = {"models": ".pt", "curves": ".csv", "predictions": ".csv"}


class ResultsError(SslCtError, ValueError):
    """A results file is missing or unusable; the message names the file and what is wrong."""


# --------------------------------------------------------------------------- names and files
def synthetic_task_keys(frame: pd.DataFrame | None) -> set[str]:
    """The tasks (keys) whose rows in ``frame`` (results, a summary or comparisons: any table
    with ``task`` and ``synthetic`` columns) came from a synthetic store."""
    if frame is None or len(frame) == 0 or "synthetic" not in frame or "task" not in frame:
        return set()
    return set(frame.loc[frame["synthetic"].astype(str).str.lower().eq("true"), "task"])


def run_name(fraction: float, seed: int, fold: int | None = -1) -> str:
    """``f{fraction}_s{seed}[_k{fold}]``, the file stem of a run's model/curves/predictions."""
    return f"f{float(fraction)}_s{int(seed)}" + (f"_k{int(fold)}" if fold is not None and fold >= 0 else "")


def run_file(output_dir: str | os.PathLike, kind: str, task: str, init: str, fraction: float, seed: int,
             fold: int | None = -1) -> Path:
    """Path of a run's ``kind`` file (:data:`RUN_KINDS`): ``finetune/<kind>/<task>/<init>/<run name><ext>``."""
    if kind not in RUN_KINDS:
        raise ResultsError(f"unknown run file kind {kind!r}; choose one of {tuple(RUN_KINDS)}")
    return StudyPaths(output_dir).finetune / kind / task / init / (run_name(fraction, seed, fold) + RUN_KINDS[kind])


def run_key(values: Sequence) -> tuple:
    """A :data:`RUN_KEY` tuple comparable across CSV round trips (fractions as floats, seeds and folds as ints)."""
    task, init, fraction, seed, fold, profile = values
    return str(task), str(init), float(fraction), int(seed), int(fold), str(profile)


# --------------------------------------------------------------------------- the results table
def result_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """Rows as a table: :data:`RESULT_COLUMNS` first (missing ones empty), a row's extra keys after them."""
    rows = list(rows)
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in RESULT_COLUMNS))
    return pd.DataFrame([{c: r.get(c) for c in RESULT_COLUMNS + extra} for r in rows], columns=RESULT_COLUMNS + extra)


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[c for c in RESULT_COLUMNS if c in frame] + [c for c in frame if c not in RESULT_COLUMNS]]


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: not a readable results table ({err})") from None


def _rewrite(path: Path, frame: pd.DataFrame) -> None:
    """Write the whole table to a temporary file and rename it: never half a table."""
    with atomic_path(path) as tmp:
        _ordered(frame).to_csv(tmp, index=False)


def append_result(path: str | os.PathLike, row: dict) -> None:
    """Append one row to the results CSV (header on first write; the table rewritten when columns differ)."""
    path = Path(path)
    frame = result_frame([row])
    if path.is_file() and path.stat().st_size > 0:
        header = pd.read_csv(path, nrows=0).columns.tolist()
        if header == frame.columns.tolist():
            frame.to_csv(path, mode="a", header=False, index=False)
            return
        frame = pd.concat([_read_table(path), frame], ignore_index=True)
    _rewrite(path, frame)


def write_row_file(path: str | os.PathLike, row: dict) -> Path:
    """One run's results row as a file of its own (a cluster job's; merged by :func:`merge_row_files`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        result_frame([row]).to_csv(tmp, index=False)
    return path


def merge_row_files(results: str | os.PathLike, files: Sequence[str | os.PathLike]) -> int:
    """Merge row files into the results CSV in one atomic rewrite; rows whose run is in it already are skipped.

    The merged row files are deleted afterwards. Returns the number of rows added.
    """
    results = Path(results)
    old = _read_table(results)
    have = {run_key(r) for r in old[RUN_KEY].itertuples(index=False, name=None)} if len(old) else set()
    new = []
    for path in files:
        frame = _read_table(Path(path))
        keep = [run_key(r) not in have for r in frame[RUN_KEY].itertuples(index=False, name=None)]
        frame = frame[keep]
        have |= {run_key(r) for r in frame[RUN_KEY].itertuples(index=False, name=None)}
        if len(frame):
            new.append(frame)
    added = sum(len(f) for f in new)
    if added:
        _rewrite(results, pd.concat(([old] if len(old) else []) + new, ignore_index=True))
    for path in files:
        Path(path).unlink(missing_ok=True)
    return added


def read_results(output_dir: str | os.PathLike, profile: str | None = None) -> pd.DataFrame:
    """The results table (empty with :data:`RESULT_COLUMNS` if none yet), optionally one profile's rows."""
    frame = _read_table(StudyPaths(output_dir).results)
    if profile is None or frame.empty:
        return frame
    return frame[frame["profile"] == profile].reset_index(drop=True)


def load_results(output_dir: str | os.PathLike, profile: str | None = None) -> pd.DataFrame:
    """:func:`read_results` with one row per run key: where a run was recorded twice, the last row counts."""
    res = read_results(output_dir, profile)
    if res.empty:
        return res
    return res.drop_duplicates(RUN_KEY, keep="last").reset_index(drop=True)


# --------------------------------------------------------------------------- predictions and curves
def write_predictions(path: str | os.PathLike, indices: Sequence[int], labels: Sequence[int],
                      probs: np.ndarray) -> Path:
    """A run's test predictions: store ``indices`` ``(N,)``, true ``labels`` ``(N,)``, ``probs`` ``(N, C)``.

    Columns ``index, label, pred`` (the arg-max class), ``prob_0 .. prob_{C-1}``.
    """
    probs = np.asarray(probs)
    frame = pd.DataFrame({"index": np.asarray(indices), "label": np.asarray(labels), "pred": probs.argmax(1)})
    for c in range(probs.shape[1]):
        frame[f"prob_{c}"] = probs[:, c]
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def load_predictions(output_dir: str | os.PathLike, task: str, init: str, fraction: float, seed: int,
                     fold: int = -1) -> pd.DataFrame:
    """A run's test predictions: ``index``, ``label``, ``pred``, ``prob_0..prob_{C-1}``."""
    path = run_file(output_dir, "predictions", task, init, fraction, seed, fold)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions for this run (fine-tune it first)")
    return pd.read_csv(path)


def prediction_probs(frame: pd.DataFrame) -> np.ndarray:
    """The class probabilities ``(N, C)`` float64 of a predictions table (columns ``prob_0..``, in class order)."""
    cols = sorted((c for c in frame.columns if c.startswith("prob_")), key=lambda c: int(c[5:]))
    return frame[cols].to_numpy(dtype=np.float64)


def write_curves(path: str | os.PathLike, curves: pd.DataFrame, **run) -> Path:
    """A run's per-epoch curves (one row per epoch), with the run's identity (``task=..., init=...``) as columns."""
    with atomic_path(path) as tmp:
        curves.assign(**run).to_csv(tmp, index=False)
    return Path(path)


def load_curves(output_dir: str | os.PathLike, task: str, init: str | None = None) -> pd.DataFrame:
    """All per-epoch curves of ``task`` (optionally one init) in one table."""
    root = StudyPaths(output_dir).finetune / "curves" / task
    files = sorted((root / init).glob("*.csv") if init else root.glob("*/*.csv"))
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True) if files else pd.DataFrame()
