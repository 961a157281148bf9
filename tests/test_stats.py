import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from ssl_lib import stats
from ssl_lib.finetune import append_result, run_file
from ssl_lib.metrics import compute_metrics
from ssl_lib.paths import StudyPaths


def _pred(labels, probs, index=None):
    f = pd.DataFrame({"index": np.arange(len(labels)) if index is None else index, "label": labels,
                      "pred": probs.argmax(1)})
    for c in range(probs.shape[1]):
        f[f"prob_{c}"] = probs[:, c]
    return f


def _model(y, quality, c=2, seed=0):
    """Probabilities whose argmax is right with chance ``quality`` (and ranked accordingly)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(c), len(y)) * 0.5
    good = rng.random(len(y)) < quality
    p[np.arange(len(y)), np.where(good, y, (y + 1) % c)] += 1.0
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("c", [2, 4])
def test_weighted_metrics_equal_sklearn(c):
    rng = np.random.default_rng(c)
    y = rng.integers(0, c, 80)
    p = np.round(rng.dirichlet(np.ones(c), 80), 1)  # ties on purpose
    ones = np.ones((1, 80))
    m = compute_metrics(y, p)
    for metric in ("auc", "f1", "accuracy"):
        assert stats.weighted_metric(metric, ones, y, p)[0] == pytest.approx(m[metric])
    # integer weights == repeating the cases
    w = rng.integers(0, 3, 80)
    rep = np.repeat(np.arange(80), w)
    ref_auc = roc_auc_score(y[rep], p[rep][:, 1]) if c == 2 else None
    ref_f1 = f1_score(y[rep], p[rep].argmax(1), average="binary" if c == 2 else "macro", labels=list(range(c)))
    assert stats.weighted_metric("f1", w[None].astype(float), y, p)[0] == pytest.approx(ref_f1)
    if ref_auc is not None:
        assert stats.weighted_metric("auc", w[None].astype(float), y, p)[0] == pytest.approx(ref_auc)


def test_holm():
    assert np.allclose(stats.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    out = stats.holm([0.2, np.nan])
    assert out[0] == pytest.approx(0.2) and np.isnan(out[1])


def test_identical_predictions_show_no_difference():
    y = np.arange(100) % 2
    a = [_pred(y, _model(y, 0.7, seed=s)) for s in range(2)]
    for metric in ("auc", "f1"):
        r = stats.paired_bootstrap(a, [x.copy() for x in a], metric, n_boot=300)
        assert r["diff"] == 0 and r["ci_low"] == 0 and r["ci_high"] == 0 and r["p_boot"] == 1.0
    assert stats.paired_run_tests([0.7, 0.8], [0.7, 0.8])["p_ttest"] == 1.0
    assert np.isnan(stats.paired_run_tests([0.7, 0.8], [0.6, 0.7])["p_ttest"])  # equal differences: no spread
    assert np.isnan(stats.paired_run_tests([0.7], [0.6])["p_ttest"])


def test_clearly_better_model_is_significant():
    y = np.arange(200) % 2
    good = [_pred(y, _model(y, 0.95, seed=s)) for s in range(3)]
    bad = [_pred(y, _model(y, 0.55, seed=10 + s)) for s in range(3)]
    r = stats.paired_bootstrap(good, bad, "f1", n_boot=300)
    assert r["diff"] > 0.2 and r["ci_low"] > 0 and r["p_boot"] < 0.01
    with pytest.raises(ValueError, match="different test cases"):
        stats.paired_bootstrap(good[:1], [_pred(y, _model(y, 0.5), index=np.arange(200) + 1)], "f1")


def test_compare_inits_from_tables(tmp_path):
    y = np.arange(120) % 3
    quality = {"random": 0.4, "spark": 0.95, "byol": 0.95}
    for init, q in quality.items():
        for seed in (0, 1, 2):
            probs = _model(y, q, c=3, seed=seed + (100 if init == "byol" else 0))
            path = run_file(tmp_path, "predictions", "organs", init, 1.0, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            _pred(y, probs).to_csv(path, index=False)
            append_result(StudyPaths(tmp_path).results, {"task": "organs", "init": init, "fraction": 1.0, "seed": seed,
                                                          "fold": -1, "profile": "smoke", **compute_metrics(y, probs)})
    out = stats.compare_inits(tmp_path, n_boot=300)
    assert len(out) == 3 * 2  # 3 pairs x (auc, f1)
    assert (out["p_ttest_holm"] >= out["p_ttest"] - 1e-12).all()
    assert (out["holds"] == (out["p_ttest_holm"] < 0.05)).all()  # the decision is the run-level test
    sig = out.set_index(["init_a", "init_b", "metric"])
    assert sig.loc[("random", "spark", "f1"), "holds"] and sig.loc[("random", "spark", "f1"), "verdict"] == "spark better"
    assert not sig.loc[("spark", "byol", "f1"), "holds"]
    assert sig.loc[("random", "spark", "auc"), "n_runs"] == 3
    assert "paired t-test over runs" in out["method"].iloc[0]
    assert stats.compare_inits(tmp_path / "empty").empty


def test_run_level_test_matches_scipy_and_is_vectorised():
    from scipy import stats as sps

    rng = np.random.default_rng(3)
    a, b = rng.normal(0.7, 0.05, (4, 5)), rng.normal(0.68, 0.05, (4, 5))
    t = stats.run_level_test(a, b)
    for k in range(4):
        ref = sps.ttest_rel(a[k], b[k])
        assert t["p"][k] == pytest.approx(ref.pvalue)
        ci = ref.confidence_interval()
        assert (t["ci_low"][k], t["ci_high"][k]) == pytest.approx((ci.low, ci.high))
    one = stats.run_level_test([0.8], [0.7])
    assert one["diff"] == pytest.approx(0.1) and np.isnan(one["p"])


def test_run_level_decision_holds_its_error_rate_under_run_variation():
    """Null: inits have no effect, runs vary (SD 0.03), 200 cases, 5 paired runs, 400 studies."""
    null = stats.simulate_error_rates(0.0, run_sd=0.03, n_cases=200, n_runs=5, reps=400, seed=11)
    assert null["auc"] <= 0.07 and null["f1"] <= 0.07
    assert null["auc"] > 0.0 and null["f1"] > 0.0  # it is a test, not a rule that never fires
    # the case-level bootstrap the decision replaced over-claims on the same kind of studies
    sim = stats.simulate_run_metrics(0.0, run_sd=0.03, n_cases=200, n_runs=5, reps=400, seed=11)
    assert sim["auc_a"].std(axis=1, ddof=1).mean() > 0.03  # run SD 0.03 plus the test-case noise
    # a clear effect (AUC +0.1 on 0.8) is found in most studies, and its sign is right
    power = stats.simulate_error_rates(0.1, run_sd=0.03, n_cases=200, n_runs=5, reps=400, seed=12)
    assert power["auc"] >= 0.8 and power["f1"] >= 0.5


def test_case_bootstrap_overclaims_where_the_run_test_does_not(tmp_path):
    """compare_inits on tables of a null study with run variation: the verdicts follow the t-test."""
    sim = stats.simulate_run_metrics(0.0, run_sd=0.06, n_cases=200, n_runs=5, reps=1, seed=5)
    y = sim["y"].astype(int)
    rng = np.random.default_rng(0)
    fired_boot = fired_t = 0
    for study in range(12):
        out = tmp_path / f"s{study}"
        for init in ("random", "spark"):
            q = np.clip(0.8 + 0.06 * rng.standard_normal(5), 0.55, 0.99)
            d = np.sqrt(2) * __import__("scipy").stats.norm.ppf(q)
            for seed in range(5):
                s = y * d[seed] + rng.standard_normal(len(y))
                p1 = 1 / (1 + np.exp(-(s - d[seed] / 2)))
                probs = np.c_[1 - p1, p1]
                path = run_file(out, "predictions", "covid", init, 1.0, seed)
                path.parent.mkdir(parents=True, exist_ok=True)
                _pred(y, probs).to_csv(path, index=False)
                append_result(StudyPaths(out).results, {"task": "covid", "init": init, "fraction": 1.0, "seed": seed,
                                                         "fold": -1, "profile": "sim", **compute_metrics(y, probs)})
        c = stats.compare_inits(out, metrics=("auc",), n_boot=400).iloc[0]
        fired_boot += c["p_boot"] < 0.05
        fired_t += bool(c["holds"])
        assert bool(c["holds"]) == (c["p_ttest_holm"] < 0.05)
    assert fired_t <= 2 < fired_boot
