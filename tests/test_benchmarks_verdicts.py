"""The verdict error-rate benchmark runs end to end at a tiny size (its numbers are meaningless here)."""

import pandas as pd
from benchmark_modules import load_benchmark

from ssl_lib import stats


def test_verdict_benchmark_runs_at_tiny_size(tmp_path, capsys):
    out = tmp_path / "rates.csv"
    long = load_benchmark("verdict_error_rates").main(["--reps", "3", "--n-boot", "20", "--runs", "2", "--n-cases",
                                                       "40", "--effects", "0.1", "--out", str(out)])
    saved = pd.read_csv(out)
    assert len(saved) == len(long) == len(stats.RULES) * (6 + 4) * 2  # rules x (6 nulls + 4 powers) x metrics
    assert set(saved["rule"]) == set(stats.RULES) and saved["rate"].between(0, 1).all()
    assert set(saved.loc[saved["what"] == "fpr", "scenario"]) == {"a", "b", "c", "cv", "a+", "c+"}
    printed = capsys.readouterr().out
    assert "FPR (b)" in printed and "power (cv) +0.10" in printed and "two-level" in printed and "run t-test" in printed
