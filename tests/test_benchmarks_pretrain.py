"""The pre-training speed benchmark runs (tiny size, no timing assertions)."""

import numpy as np

from benchmark_modules import load_benchmark


def test_benchmark_runs_at_smoke_size(capsys):
    bench = load_benchmark("pretrain_speed")
    table = bench.main(["--profile", "smoke", "--steps", "2", "--warmup", "0", "--device", "cpu"])
    assert list(table.index) == ["byol", "swav", "mocov2", "spark"]
    assert {"pretrain_img_s", "plain_img_s", "overhead", "views"} <= set(table.columns)
    assert np.isfinite(table[["pretrain_img_s", "plain_img_s", "overhead"]].to_numpy()).all()
    assert table.loc["swav", "views"] == "2x32 + 2x16"
    assert "overhead" in capsys.readouterr().out
