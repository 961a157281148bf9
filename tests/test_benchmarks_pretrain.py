"""The pre-training speed benchmark runs (tiny size, no timing assertions)."""

import numpy as np
import pytest

from benchmark_modules import load_benchmark


@pytest.mark.slow
def test_benchmark_runs_at_smoke_size(capsys):
    bench = load_benchmark("pretrain_speed")
    table = bench.main(["--profile", "smoke", "--steps", "2", "--warmup", "0", "--device", "cpu"])
    assert list(table.index) == ["byol", "swav", "mocov2", "spark"]
    assert {"pretrain_img_s", "plain_img_s", "overhead", "views"} <= set(table.columns)
    assert np.isfinite(table[["pretrain_img_s", "plain_img_s", "overhead"]].to_numpy()).all()
    assert table.loc["swav", "views"] == "2x48 + 2x40"  # smoke crops: none reaches layer4 as 1 x 1
    assert "overhead" in capsys.readouterr().out


@pytest.mark.slow
def test_compile_column_at_smoke_size(capsys):
    """``--compile`` adds the compiled step's images/s (aot_eager here: inductor takes minutes on 2 cores)."""
    bench = load_benchmark("pretrain_speed")
    table = bench.main(["--profile", "smoke", "--steps", "1", "--warmup", "1", "--device", "cpu", "--methods",
                        "mocov2", "--compile", "--compile-backend", "aot_eager"])
    assert table.loc["mocov2", "compiled_img_s"] > 0
    assert np.isclose(table.loc["mocov2", "compiled_vs_eager"],
                      table.loc["mocov2", "compiled_img_s"] / table.loc["mocov2", "pretrain_img_s"])
    assert "compiled with aot_eager" in capsys.readouterr().out
