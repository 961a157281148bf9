"""The pre-training speed benchmark runs (tiny size, no timing assertions)."""

import importlib.util
from pathlib import Path

import numpy as np

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "pretrain_speed.py"


def test_benchmark_runs_at_smoke_size(capsys):
    spec = importlib.util.spec_from_file_location("pretrain_speed", PATH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    table = bench.main(["--profile", "smoke", "--steps", "2", "--warmup", "0", "--device", "cpu"])
    assert list(table.index) == ["byol", "swav", "mocov2", "spark"]
    assert {"pretrain_img_s", "plain_img_s", "overhead", "views"} <= set(table.columns)
    assert np.isfinite(table[["pretrain_img_s", "plain_img_s", "overhead"]].to_numpy()).all()
    assert table.loc["swav", "views"] == "2x32 + 2x16"
    assert "overhead" in capsys.readouterr().out
