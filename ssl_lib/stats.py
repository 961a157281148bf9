"""Statistics the paper does not give: which differences between initialisations hold.

Wolf et al. 2023 compare means ± standard deviations over five runs (Table 2, Figure 5) and call
some differences significant without a test. For every task, training fraction and metric we
compare each pair of inits (A, B) two ways:

1. **Paired bootstrap over test cases** (the main test). The test slices are resampled with
   replacement (``n_boot`` times); the same resample is applied to A's and B's predictions of
   a run (and shared by all runs that have the same test set), and the difference of the metric,
   averaged over the paired runs (seeds/folds), is recomputed. The 95 % percentile interval of
   that difference is the CI; the two-sided p-value is ``2 * min(P*(d <= 0), P*(d >= 0))`` with
   the +1 correction. This captures test-set sampling noise, which five seeds on one test set
   do not.
2. **Paired t-test over runs** (``scipy.stats.ttest_rel`` on the per-run test metrics, paired by
   seed/fold; needs >= 2 runs) and the Wilcoxon signed-rank test beside it (with five runs its
   smallest possible p is 0.0625, so it can never reach 0.05; reported for completeness).

p-values are Holm-corrected within each family (task, fraction, metric) over all pairs. A
difference *holds* when the bootstrap CI excludes 0 and the Holm-adjusted bootstrap p is below
``alpha``. The metrics are those of :mod:`ssl_lib.metrics` (AUC of class 1 / macro OvR; F1 of
the finding / macro), recomputed here in vectorised weighted form (checked against scikit-learn
in the tests).
"""

from __future__ import annotations

import itertools
import os
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from .finetune import read_results, run_file

METRICS = ("auc", "f1", "accuracy")


# --------------------------------------------------------------------------- weighted metrics
def _weighted_binary_auc(W: np.ndarray, score: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of case weights ``W`` ``(B, n)`` (ties count 1/2)."""
    order = np.argsort(score, kind="mergesort")
    s, pos = score[order], positive[order]
    Ws = W[:, order]
    wneg = Ws * (~pos)
    wpos = Ws * pos
    C = np.concatenate([np.zeros((W.shape[0], 1)), np.cumsum(wneg, axis=1)], axis=1)
    new = np.r_[True, s[1:] != s[:-1]]
    gid = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(s)]
    below = C[:, starts[gid]]
    equal = C[:, ends[gid]] - below
    num = (wpos * (below + 0.5 * equal)).sum(axis=1)
    den = wpos.sum(axis=1) * wneg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _weighted_f1(W: np.ndarray, pred: np.ndarray, y: np.ndarray, cls: int) -> np.ndarray:
    tp = W @ ((pred == cls) & (y == cls)).astype(float)
    fp = W @ ((pred == cls) & (y != cls)).astype(float)
    fn = W @ ((pred != cls) & (y == cls)).astype(float)
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)


def weighted_metric(metric: str, W: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``metric`` (auc | f1 | accuracy, as :mod:`ssl_lib.metrics`) under each row of case weights.

    ``W``: ``(B, n)`` non-negative weights (bootstrap counts); ``labels`` ``(n,)``; ``probs``
    ``(n, C)``. Returns ``(B,)``; a row of ones gives the plain metric.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    c = p.shape[1]
    pred = p.argmax(1)
    if metric == "accuracy":
        return (W @ (pred == y).astype(float)) / W.sum(axis=1)
    if metric == "f1":
        if c == 2:
            return _weighted_f1(W, pred, y, 1)
        return np.mean([_weighted_f1(W, pred, y, k) for k in range(c)], axis=0)
    if metric == "auc":
        if c == 2:
            return _weighted_binary_auc(W, p[:, 1], y == 1)
        pn = p / p.sum(axis=1, keepdims=True)
        per = np.stack([_weighted_binary_auc(W, pn[:, k], y == k) for k in range(c) if (y == k).any()])
        return np.nanmean(per, axis=0) if per.size else np.full(W.shape[0], np.nan)
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


# --------------------------------------------------------------------------- predictions
def load_predictions(output_dir: str | os.PathLike, task: str, init: str, fraction: float, seed: int,
                     fold: int = -1) -> pd.DataFrame:
    """A run's test predictions: ``index``, ``label``, ``pred``, ``prob_0..prob_{C-1}``."""
    path = run_file(output_dir, "predictions", task, init, fraction, seed, fold)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions for this run (fine-tune it first)")
    return pd.read_csv(path)


def _probs(frame: pd.DataFrame) -> np.ndarray:
    cols = sorted((c for c in frame.columns if c.startswith("prob_")), key=lambda c: int(c[5:]))
    return frame[cols].to_numpy(dtype=np.float64)


# --------------------------------------------------------------------------- tests
def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adj
    return out


def paired_bootstrap(runs_a: Sequence[pd.DataFrame], runs_b: Sequence[pd.DataFrame], metric: str, *,
                     n_boot: int = 1000, seed: int = 0, ci: float = 0.95, chunk: int = 100) -> dict:
    """Bootstrap the mean (over paired runs) difference ``metric(A) - metric(B)`` over test cases.

    ``runs_a[r]``/``runs_b[r]``: prediction tables of the same run r (same test cases). Returns
    ``{diff, ci_low, ci_high, p_boot, n_cases}``.
    """
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError("need the same number (>= 1) of runs for both inits")
    rng = np.random.default_rng(seed)
    pairs, groups = [], {}
    for a, b in zip(runs_a, runs_b):
        a, b = a.sort_values("index"), b.sort_values("index")
        if not np.array_equal(a["index"].to_numpy(), b["index"].to_numpy()):
            raise ValueError("paired runs have different test cases")
        key = tuple(a["index"].to_numpy())
        groups.setdefault(key, len(groups))
        pairs.append((groups[key], a["label"].to_numpy(), _probs(a), _probs(b)))
    sizes = {g: len(k) for k, g in groups.items()}
    observed = np.mean([weighted_metric(metric, np.ones((1, len(y))), y, pa)[0]
                        - weighted_metric(metric, np.ones((1, len(y))), y, pb)[0] for _, y, pa, pb in pairs])
    diffs = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        W = {g: rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(float) for g, n in sizes.items()}
        d = np.mean([weighted_metric(metric, W[g], y, pa) - weighted_metric(metric, W[g], y, pb)
                     for g, y, pa, pb in pairs], axis=0)
        diffs.append(d)
    d = np.concatenate(diffs)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return {"diff": observed, "ci_low": np.nan, "ci_high": np.nan, "p_boot": np.nan, "n_cases": sum(sizes.values())}
    lo, hi = np.quantile(d, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    p = min(1.0, 2 * min((np.sum(d <= 0) + 1) / (d.size + 1), (np.sum(d >= 0) + 1) / (d.size + 1)))
    return {"diff": float(observed), "ci_low": float(lo), "ci_high": float(hi), "p_boot": float(p),
            "n_cases": int(sum(sizes.values()))}


def paired_run_tests(values_a: Sequence[float], values_b: Sequence[float]) -> dict:
    """Paired t-test and Wilcoxon signed-rank over runs (NaN with < 2 runs; p = 1 if all equal)."""
    a, b = np.asarray(values_a, float), np.asarray(values_b, float)
    d = a - b
    out = {"n_runs": len(d), "p_ttest": np.nan, "p_wilcoxon": np.nan}
    if len(d) < 2 or np.isnan(d).any():
        return out
    if np.allclose(d, 0):
        return out | {"p_ttest": 1.0, "p_wilcoxon": 1.0}
    if np.allclose(d, d[0]):  # no spread: t undefined; the sign is unanimous but untestable by t
        out["p_ttest"] = np.nan
    else:
        out["p_ttest"] = float(sps.ttest_rel(a, b).pvalue)
    out["p_wilcoxon"] = float(sps.wilcoxon(a, b, zero_method="zsplit").pvalue)
    return out


def compare_inits(output_dir: str | os.PathLike, *, tasks: Iterable[str] | None = None,
                  fractions: Iterable[float] | None = None, inits: Iterable[str] | None = None,
                  metrics: Sequence[str] = ("auc", "f1"), profile: str | None = None, n_boot: int = 1000,
                  alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """Tidy table of paired comparisons of every pair of inits per task, fraction and metric.

    Reads the results table and the saved per-case test predictions. Columns: task, fraction,
    metric, init_a, init_b, n_runs, mean_a, mean_b, diff (A - B, mean over paired runs), ci_low,
    ci_high, p_boot, p_boot_holm, p_ttest, p_ttest_holm, p_wilcoxon, ci_excludes_0, holds,
    verdict, method.
    """
    from .tasks import use_study_tasks

    use_study_tasks(output_dir)  # the study's user tasks become known here
    res = read_results(output_dir, profile)
    cols = ["task", "fraction", "metric", "init_a", "init_b", "n_runs", "mean_a", "mean_b", "diff", "ci_low", "ci_high",
            "p_boot", "p_boot_holm", "p_ttest", "p_ttest_holm", "p_wilcoxon", "ci_excludes_0", "holds", "verdict",
            "method"]
    if res.empty:
        return pd.DataFrame(columns=cols)
    if tasks is not None:
        res = res[res["task"].isin(list(tasks))]
    if fractions is not None:
        res = res[np.isin(res["fraction"].astype(float).round(6), np.round(list(fractions), 6))]
    if inits is not None:
        res = res[res["init"].isin(list(inits))]
    res = res.drop_duplicates(["task", "init", "fraction", "seed", "fold"], keep="last")
    rows = []
    for (task, fraction), grp in res.groupby(["task", "fraction"], sort=True):
        names = list(dict.fromkeys(grp["init"]))
        preds = {}
        for r in grp.itertuples(index=False):
            path = run_file(output_dir, "predictions", task, r.init, fraction, int(r.seed), int(r.fold))
            if path.is_file():
                preds[(r.init, int(r.seed), int(r.fold))] = pd.read_csv(path)
        for a, b in itertools.combinations(names, 2):
            runs = sorted({k[1:] for k in preds if k[0] == a} & {k[1:] for k in preds if k[0] == b})
            if not runs:
                continue
            pa, pb = [preds[(a, *r)] for r in runs], [preds[(b, *r)] for r in runs]
            for metric in metrics:
                boot = paired_bootstrap(pa, pb, metric, n_boot=n_boot, seed=seed)
                va = [weighted_metric(metric, np.ones((1, len(x))), x["label"].to_numpy(), _probs(x))[0] for x in pa]
                vb = [weighted_metric(metric, np.ones((1, len(x))), x["label"].to_numpy(), _probs(x))[0] for x in pb]
                rt = paired_run_tests(va, vb)
                rows.append({"task": task, "fraction": float(fraction), "metric": metric, "init_a": a, "init_b": b,
                             "n_runs": rt["n_runs"], "mean_a": float(np.mean(va)), "mean_b": float(np.mean(vb)),
                             **boot, "p_ttest": rt["p_ttest"], "p_wilcoxon": rt["p_wilcoxon"]})
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=cols)
    fam = ["task", "fraction", "metric"]
    out["p_boot_holm"] = out.groupby(fam)["p_boot"].transform(lambda s: pd.Series(holm(s.to_numpy()), index=s.index))
    out["p_ttest_holm"] = out.groupby(fam)["p_ttest"].transform(lambda s: pd.Series(holm(s.to_numpy()), index=s.index))
    out["ci_excludes_0"] = (out["ci_low"] > 0) | (out["ci_high"] < 0)
    out["holds"] = out["ci_excludes_0"] & (out["p_boot_holm"] < alpha)
    out["verdict"] = np.where(out["holds"], np.where(out["diff"] > 0, out["init_a"] + " better",
                                                     out["init_b"] + " better"), "no difference shown")
    out["method"] = (f"paired bootstrap over test cases ({n_boot} resamples, mean over paired runs), Holm within "
                     "task x fraction x metric; paired t-test / Wilcoxon over runs")
    return out[cols]

