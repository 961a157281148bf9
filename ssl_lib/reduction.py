"""Downstream dataset reduction (Wolf et al. 2023, "Downstream Dataset Reduction", Table 3).

The training split of a task is shrunk to 75 %, 50 %, 25 % (and 10 %, 5 % for the large
OrganSMNIST set); every run draws its own random subset from its own seed, keeping the class
distribution of the full training set. Subsets are *nested*: for one seed the 25 % subset lies
inside the 50 % subset, which lies inside the 75 % one. The training split is already
patient-disjoint from validation and test, so drawing at slice level cannot leak patients.

How: every training slice gets a key ``(rank within its class + u) / class size`` with a
random permutation and ``u ~ U[0, 1)`` from ``numpy.random.default_rng([seed, fold])``; the
slices sorted by key form one stratified order, and a fraction ``f`` keeps its first
``floor(f * N)`` slices (the paper's sizes: 425 -> 318 -> 212 -> 106). Each class then holds
``f * n_c`` slices up to one.

The paper's stopping rule (:func:`stop_reducing`): once every pre-training method's mean test F1
on a task is below 0.7, no smaller fraction is run for that task (the baselines, random and
ImageNet, do not count: a study given ImageNet weights runs the methods' grid the paper ran). Which F1 is a parameter: the
paper's rule read the F1 of the authors' code (``f1_seed``: micro F1 for OrganSMNIST, F1 of the
NonCOVID class for COVID-19), which the ``paper`` profile uses (``stop_metric``); for the
macro/finding F1 of our tables the rule would stop where the paper continued.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .baselines import BASELINE_INITS

#: The paper's reduction steps; 10 % and 5 % only for OrganSMNIST.
PAPER_FRACTIONS = {"covid": (1.0, 0.75, 0.5, 0.25), "organs": (1.0, 0.75, 0.5, 0.25, 0.1, 0.05),
                   "brain": (1.0, 0.75, 0.5, 0.25)}
#: The paper's limit: stop when every method's mean F1 is below this.
STOP_F1 = 0.7


def stratified_order(labels: Sequence[int], seed: int, fold: int = -1) -> np.ndarray:
    """Positions ``0..N-1`` in one random, class-stratified order (the same for the same seed)."""
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(fold) + 1])
    key = np.empty(len(y), dtype=np.float64)
    for c in np.unique(y):
        pos = np.flatnonzero(y == c)
        ranks = rng.permutation(len(pos))
        key[pos] = (ranks + rng.random(len(pos))) / len(pos)
    return np.argsort(key, kind="stable")


def reduced_size(n: int, fraction: float) -> int:
    """``floor(fraction * n)`` (at least 1 for a positive fraction), as the paper's Table 3."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    return max(1, int(np.floor(fraction * n + 1e-9)))


def reduce_indices(indices: Sequence[int], labels: Sequence[int], fraction: float, seed: int,
                   fold: int = -1) -> np.ndarray:
    """The training subset of run ``(seed, fold)`` at ``fraction``: sorted store indices.

    ``indices``/``labels``: the full training split and its labels (same length).
    """
    idx = np.asarray(indices, dtype=np.int64)
    if len(idx) != len(labels):
        raise ValueError(f"{len(idx)} indices but {len(labels)} labels")
    if fraction == 1.0:
        return np.sort(idx)
    order = stratified_order(labels, seed, fold)
    return np.sort(idx[order[: reduced_size(len(idx), fraction)]])


def stop_reducing(results: pd.DataFrame, task: str, fraction: float, *, inits: Iterable[str] | None = None,
                  threshold: float = STOP_F1, metric: str = "f1") -> bool:
    """True when every pre-training init's mean ``metric`` at ``fraction`` is below ``threshold``.

    The baselines (:data:`ssl_lib.baselines.BASELINE_INITS`: random, the paper's "-" row, and
    ImageNet) do not count. False when no rows exist.
    """
    rows = results[(results["task"] == task) & np.isclose(results["fraction"].astype(float), fraction)]
    rows = rows[~rows["init"].isin(BASELINE_INITS)]
    if inits is not None:
        rows = rows[rows["init"].isin(list(inits))]
    if rows.empty:
        return False
    means = rows.groupby("init")[metric].mean()
    return bool((means < threshold).all())
