"""Test metrics of the fine-tuned classifiers, defined once (scikit-learn underneath).

Wolf et al. 2023 report accuracy, AUC and F1 (Table 2, Figure 5) without saying which class F1
is computed for. We fix one definition per metric and keep the variants the authors' code
actually computes in their own column (``f1_seed``) so that our numbers can be compared with
theirs. Inputs everywhere: ``labels`` int ``(N,)`` with class indices, ``probs`` float
``(N, C)`` with class probabilities (softmax outputs; rows sum to 1).

Definitions (see :func:`metric_definitions` for the table in the book):

* ``accuracy``: share of slices whose arg-max class equals the label.
* ``auc``: binary tasks: ROC AUC of ``P(class 1)`` (class 1 = the finding); multi-class:
  macro average of the one-vs-rest ROC AUCs.
* ``f1``: binary tasks: F1 of the positive class = the finding (label 1: COVID, hemorrhage),
  from the arg-max prediction; multi-class: macro-averaged F1 (classes weigh equally).
* ``f1_seed``: the authors' code. COVID-19: their labels are COVID = 0, NonCOVID = 1 and they
  score class 1, i.e. the F1 of **NonCOVID** (our ``pos_label=0``); OrganSMNIST: **micro** F1
  (which equals accuracy for single-label multi-class); other tasks: same as ``f1``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from .errors import SslCtError

#: Which F1 the authors' code computes, per kind of ``f1_seed`` variant.
SEED_F1_VARIANTS = ("negative_class", "micro", "same")


class MetricError(SslCtError, ValueError):
    """Labels/probabilities do not fit together (shapes, classes)."""


def _check(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] < 2:
        raise MetricError(f"probs must be (N, C>=2) matching {y.shape[0]} labels, got {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise MetricError(f"labels must lie in 0..{p.shape[1] - 1}, got {y.min()}..{y.max()}")
    return y, p


def predictions(probs) -> np.ndarray:
    """Arg-max class ``(N,)`` of ``probs`` ``(N, C)``."""
    return np.asarray(probs).argmax(axis=1)


def accuracy(labels, probs) -> float:
    """Share of correct arg-max predictions."""
    y, p = _check(labels, probs)
    return float(accuracy_score(y, predictions(p)))


def auc(labels, probs) -> float:
    """ROC AUC: binary on ``P(class 1)``; multi-class macro one-vs-rest. NaN if a class is absent."""
    y, p = _check(labels, probs)
    c = p.shape[1]
    if len(np.unique(y)) < 2:
        return float("nan")
    if c == 2:
        return float(roc_auc_score(y, p[:, 1]))
    present = np.unique(y)
    if len(present) < c:  # macro OvR over the classes present in ``y``
        return float(np.mean([roc_auc_score(y == k, p[:, k]) for k in present]))
    pn = p / p.sum(axis=1, keepdims=True)
    return float(roc_auc_score(y, pn, multi_class="ovr", average="macro", labels=list(range(c))))


def f1(labels, probs, *, pos_label: int = 1) -> float:
    """F1: binary: of class ``pos_label`` (default 1 = the finding); multi-class: macro F1."""
    y, p = _check(labels, probs)
    pred = predictions(p)
    if p.shape[1] == 2:
        return float(f1_score(y, pred, pos_label=pos_label, average="binary", zero_division=0))
    return float(f1_score(y, pred, labels=list(range(p.shape[1])), average="macro", zero_division=0))


def f1_seed(labels, probs, variant: str = "same") -> float:
    """The F1 the authors' code reports (column ``f1_seed``).

    ``variant``: ``"negative_class"`` (COVID-19: F1 of NonCOVID, label 0), ``"micro"``
    (OrganSMNIST: micro F1), ``"same"`` (identical to :func:`f1`).
    """
    if variant not in SEED_F1_VARIANTS:
        raise MetricError(f"unknown f1_seed variant {variant!r}; choose one of {SEED_F1_VARIANTS}")
    if variant == "negative_class":
        return f1(labels, probs, pos_label=0)
    if variant == "micro":
        y, p = _check(labels, probs)
        return float(f1_score(y, predictions(p), average="micro", zero_division=0))
    return f1(labels, probs)


def compute_metrics(labels, probs, *, seed_variant: str = "same") -> dict[str, float]:
    """``{accuracy, auc, f1, f1_seed}`` of one test (or validation) set."""
    return {
        "accuracy": accuracy(labels, probs),
        "auc": auc(labels, probs),
        "f1": f1(labels, probs),
        "f1_seed": f1_seed(labels, probs, seed_variant),
    }


def metric_definitions() -> pd.DataFrame:
    """The metric definitions used in every table and figure (for the book)."""
    rows = [
        ("accuracy", "share of test slices whose arg-max class equals the label", "same", "sklearn accuracy_score"),
        ("auc", "ROC AUC of P(class 1), class 1 = the finding (COVID, hemorrhage)",
         "macro average of one-vs-rest ROC AUCs", "sklearn roc_auc_score"),
        ("f1", "F1 of the positive class = the finding (label 1)", "macro-averaged F1 (classes weigh equally)",
         "sklearn f1_score"),
        ("f1_seed", "authors' code: COVID-19 F1 of the NonCOVID class (their class 1); Brain: same as f1",
         "authors' code: micro F1 (= accuracy)", "sklearn f1_score(pos_label=0 | average='micro')"),
    ]
    return pd.DataFrame(rows, columns=["metric", "binary tasks", "multi-class tasks", "computed with"])
