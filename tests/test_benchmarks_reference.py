"""The reference-loop benchmark runs at smoke size on the CPU (no timing assertions)."""

import numpy as np
import pytest
import torch

from benchmark_modules import load_benchmark


def test_reference_loops_run_at_smoke_size(capsys):
    bench = load_benchmark("reference_loops")
    table = bench.main(["--profile", "smoke", "--steps", "1", "--warmup", "0", "--device", "cpu"])
    assert [m for m, _ in table.index] == ["byol", "byol", "mocov2", "mocov2", "swav", "swav", "spark"]
    timed = table.drop(index="spark", level="method")
    assert np.isfinite(timed[["s_per_step", "img_s", "ours_vs_ref"]].to_numpy(dtype=float)).all()
    ours = timed.xs("ours", level="impl")
    ref = timed.xs("lightly example loop", level="impl")
    np.testing.assert_allclose(ours["ours_vs_ref"], ref["s_per_step"] / ours["s_per_step"])
    assert "skipped" in table.xs("spark", level="method").index[0]  # no official copy given: said so
    assert "lightly example loop" in capsys.readouterr().out


def test_reference_views_match_ours():
    """The lightly transforms give the views our step trains on (count and sizes), normalised grey slices."""
    from PIL import Image

    from ssl_lib.pretrain import build_module, get_config

    bench = load_benchmark("reference_loops")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8), mode="L")
    for method in ("byol", "mocov2", "swav"):
        cfg = get_config(method, "smoke")
        views = bench.lightly_transform(method, cfg, 0.5, 0.25)(img)
        module = build_module(method, "smoke")
        ours = module.views(torch.zeros(1, 1, 32, 32))
        assert [tuple(v.shape) for v in views] == [tuple(v.shape[1:]) for v in ours], method


def test_spark_reference_needs_the_comparison_script(tmp_path, monkeypatch):
    bench = load_benchmark("reference_loops")
    monkeypatch.setitem(__import__("sys").modules, "spark_vs_official", None)  # as in a checkout without it
    with pytest.raises(SystemExit, match="spark_vs_official"):
        bench.spark_rows(str(tmp_path), "smoke", 1, 0, "cpu")
