"""Statistics the paper does not give: which differences between initialisations hold.

Wolf et al. 2023 compare means ± standard deviations over five runs (Table 2, Figure 5) and call
some differences significant without a test. For every task, training fraction and metric we
compare each pair of inits (A, B):

1. **The decision: a paired t-test over runs** (:func:`run_level_test`). Each run (seed, or CV
   fold) gives one test metric per init; the differences A - B of the paired runs are tested
   against 0 with a two-sided one-sample t-test (``n_runs - 1`` degrees of freedom), and their
   t-interval is the reported 95 % CI. A run's metric already carries its test-case noise, and the
   spread of the differences over runs carries the run-to-run variation (seed, subset, fold), so
   the error rate holds when runs differ in quality: in :func:`simulate_error_rates` (no effect,
   run SD 0.03, 200 cases, 5 runs) it fires at about 5 %. It needs >= 2 runs whose differences
   are not all equal; otherwise there is no verdict.
2. **Description: a paired bootstrap over test cases** (:func:`paired_bootstrap`, the columns
   ``case_ci_low``/``case_ci_high``/``p_boot``). Test slices are resampled, the same resample
   for A and B of a run, and the mean difference over runs recomputed. It shows how much of the
   difference the test set alone could explain, but it treats the runs as fixed, so under run
   variation it fires far too often (16 % instead of 5 % for AUC in the simulation above): it is
   never used for a verdict. The Wilcoxon signed-rank p is reported beside the t-test (with
   five runs its smallest possible p is 0.0625, so it cannot reach 0.05 on its own).

p-values are Holm-corrected within each family (task, fraction, metric) over all pairs. A
difference *holds* when the Holm-adjusted t-test p is below ``alpha``. The metrics are those of
:mod:`ssl_lib.metrics` (AUC of class 1 / macro OvR; F1 of the finding / macro), recomputed here in
vectorised weighted form (checked against scikit-learn in the tests).
"""

from __future__ import annotations

import itertools
import os
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from .runs import load_predictions  # noqa: F401  (re-exported for the notebooks)
from .runs import prediction_probs as _probs
from .runs import read_results, run_file

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


def run_level_test(values_a, values_b, *, ci: float = 0.95) -> dict:
    """Paired t-test over runs of ``metric(A) - metric(B)``, vectorised over leading axes.

    ``values_a``/``values_b``: ``(..., R)`` per-run test metrics, paired along the last axis (same
    seed/fold). Returns arrays ``(...)``: ``diff`` (mean difference), ``ci_low``/``ci_high`` (the
    t-interval), ``p`` (two-sided), ``n_runs``. With fewer than 2 runs, or differences that are all
    equal (no spread to test against), ``p`` and the interval are NaN - except all-zero
    differences, which give ``p = 1``.
    """
    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired run metrics differ in shape: {a.shape} vs {b.shape}")
    d = a - b
    r = d.shape[-1]
    mean = d.mean(axis=-1) if r else np.full(d.shape[:-1], np.nan)
    nan = np.full(np.shape(mean), np.nan)
    if r < 2:
        return {"diff": mean, "ci_low": nan, "ci_high": nan.copy(), "p": nan.copy(), "n_runs": r}
    sd = d.std(axis=-1, ddof=1)
    se = sd / np.sqrt(r)
    spread = se > 1e-12 * np.maximum(1.0, np.abs(mean))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(spread, mean / np.where(spread, se, 1.0), np.nan)
    p = np.where(spread, 2 * sps.t.sf(np.abs(t), r - 1), np.nan)
    p = np.where(~spread & (np.abs(d).max(axis=-1) == 0), 1.0, p)
    half = sps.t.ppf(0.5 + ci / 2, r - 1) * se
    lo = np.where(spread | (p == 1.0), mean - half, np.nan)
    hi = np.where(spread | (p == 1.0), mean + half, np.nan)
    return {"diff": mean, "ci_low": lo, "ci_high": hi, "p": p, "n_runs": r}


def paired_run_tests(values_a: Sequence[float], values_b: Sequence[float]) -> dict:
    """Paired t-test (:func:`run_level_test`) and Wilcoxon signed-rank over runs (NaN with < 2 runs)."""
    a, b = np.asarray(values_a, float), np.asarray(values_b, float)
    out = {"n_runs": len(a), "p_ttest": np.nan, "p_wilcoxon": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    if len(a) < 2 or np.isnan(a - b).any():
        return out
    t = run_level_test(a, b)
    out |= {"p_ttest": float(t["p"]), "ci_low": float(t["ci_low"]), "ci_high": float(t["ci_high"])}
    d = a - b
    out["p_wilcoxon"] = 1.0 if np.allclose(d, 0) else float(sps.wilcoxon(a, b, zero_method="zsplit").pvalue)
    return out


# --------------------------------------------------------------------------- error rates
def _rank_auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUC of each row of ``scores`` ``(..., n)`` for the boolean ``positive`` ``(n,)`` (Mann-Whitney)."""
    ranks = sps.rankdata(scores, axis=-1)
    n1 = positive.sum()
    n0 = positive.size - n1
    return (ranks[..., positive].sum(axis=-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _f1_of(pred: np.ndarray, positive: np.ndarray) -> np.ndarray:
    tp = (pred & positive).sum(axis=-1)
    fp = (pred & ~positive).sum(axis=-1)
    fn = (~pred & positive).sum(axis=-1)
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def simulate_run_metrics(effect: float = 0.0, *, run_sd: float = 0.03, n_cases: int = 200, n_runs: int = 5,
                         reps: int = 200, base_auc: float = 0.8, prevalence: float = 0.5,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """Simulated paired studies: per-run test AUC and F1 of two inits, ``(reps, n_runs)`` each.

    One test set of ``n_cases`` (``prevalence`` positive) per study. In each run r an init scores
    the cases ``s = y * d_r + N(0, 1)`` and predicts positive when ``s > d_r / 2``; its separation
    ``d_r = sqrt(2) * Phi^-1(q_r)`` comes from the run's quality ``q_r ~ N(base_auc + effect_i,
    run_sd)`` (the AUC it would have on infinite data; ``effect`` for A, 0 for B), drawn
    independently per init and run: runs vary by seed/subset even when inits do not. Returns
    ``{"auc_a", "auc_b", "f1_a", "f1_b"}`` and the labels ``y``.
    """
    rng = np.random.default_rng(seed)
    y = np.zeros(n_cases, dtype=bool)
    y[: int(round(prevalence * n_cases))] = True
    out = {"y": y}
    for init, shift in (("a", effect), ("b", 0.0)):
        q = np.clip(base_auc + shift + run_sd * rng.standard_normal((reps, n_runs)), 0.501, 0.999)
        d = np.sqrt(2) * sps.norm.ppf(q)
        s = y * d[..., None] + rng.standard_normal((reps, n_runs, n_cases))
        out[f"auc_{init}"] = _rank_auc(s, y)
        out[f"f1_{init}"] = _f1_of(s > d[..., None] / 2, y)
    return out


def simulate_error_rates(effect: float = 0.0, *, alpha: float = 0.05, **kwargs) -> dict[str, float]:
    """How often the run-level decision (:func:`run_level_test`, p < ``alpha``) fires, per metric.

    With ``effect = 0`` this is the false-positive rate, otherwise the power (the share of
    studies declaring A better). ``kwargs`` go to :func:`simulate_run_metrics`.
    """
    sim = simulate_run_metrics(effect, **kwargs)
    out = {}
    for metric in ("auc", "f1"):
        t = run_level_test(sim[f"{metric}_a"], sim[f"{metric}_b"])
        fired = np.nan_to_num(t["p"], nan=1.0) < alpha
        out[metric] = float(np.mean(fired & (np.sign(t["diff"]) == np.sign(effect))) if effect
                            else np.mean(fired))
    return out


def compare_inits(output_dir: str | os.PathLike, *, tasks: Iterable[str] | None = None,
                  fractions: Iterable[float] | None = None, inits: Iterable[str] | None = None,
                  metrics: Sequence[str] = ("auc", "f1"), profile: str | None = None, n_boot: int = 1000,
                  alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """Tidy table of paired comparisons of every pair of inits per task, fraction and metric.

    Reads the results table and the saved per-case test predictions. Columns: task, fraction,
    metric, init_a, init_b, n_runs, mean_a, mean_b, sd_a, sd_b (over runs), diff (A - B, mean over
    paired runs), ci_low/ci_high (t-interval over runs), p_ttest, p_ttest_holm (the decision),
    p_wilcoxon, case_ci_low/case_ci_high/p_boot (bootstrap over test cases, description only),
    holds, verdict, method.
    """
    from .tasks import use_study_tasks

    use_study_tasks(output_dir)  # the study's user tasks become known here
    res = read_results(output_dir, profile)
    cols = ["task", "fraction", "metric", "init_a", "init_b", "n_runs", "mean_a", "mean_b", "sd_a", "sd_b", "diff",
            "ci_low", "ci_high", "p_ttest", "p_ttest_holm", "p_wilcoxon", "case_ci_low", "case_ci_high", "p_boot",
            "holds", "verdict", "method"]
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
                             "sd_a": float(np.std(va, ddof=1)) if len(va) > 1 else np.nan,
                             "sd_b": float(np.std(vb, ddof=1)) if len(vb) > 1 else np.nan,
                             "diff": float(np.mean(np.subtract(va, vb))), "ci_low": rt["ci_low"],
                             "ci_high": rt["ci_high"], "p_ttest": rt["p_ttest"], "p_wilcoxon": rt["p_wilcoxon"],
                             "case_ci_low": boot["ci_low"], "case_ci_high": boot["ci_high"], "p_boot": boot["p_boot"]})
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=cols)
    fam = ["task", "fraction", "metric"]
    out["p_ttest_holm"] = out.groupby(fam)["p_ttest"].transform(lambda s: pd.Series(holm(s.to_numpy()), index=s.index))
    out["holds"] = (out["p_ttest_holm"] < alpha).fillna(False).astype(bool)
    out["verdict"] = np.where(out["holds"], np.where(out["diff"] > 0, out["init_a"] + " better",
                                                     out["init_b"] + " better"),
                              np.where(out["n_runs"] < 2, "not testable (one run)", "no difference shown"))
    out["method"] = ("paired t-test over runs (seeds/folds), Holm within task x fraction x metric; "
                     f"case-level bootstrap ({n_boot} resamples) as description only")
    return out[cols]
