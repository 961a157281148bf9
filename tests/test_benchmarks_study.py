"""The study speed benchmark runs end to end at smoke size on the CPU (no timing assertions)."""

import numpy as np
import pytest

from benchmark_modules import load_benchmark


@pytest.mark.slow
def test_study_speed_runs_at_smoke_size(capsys):
    bench = load_benchmark("study_speed")
    out = bench.main(["--profile", "smoke", "--device", "cpu", "--steps", "1", "--warmup", "0",
                      "--finetune-n", "32", "--store-n", "12", "--store-source-size", "48", "--store-size", "16",
                      "--store-batch", "4", "--paper", "--paper-profile", "smoke", "--paper-methods", "byol",
                      "--paper-steps", "1"])
    assert list(out["pretrain"].index) == ["byol", "swav", "mocov2", "spark"]
    assert np.isfinite(out["pretrain"][["pretrain_img_s", "plain_img_s", "overhead"]].to_numpy()).all()
    assert out["finetune"]["plain step"] > 0 and out["store"]["slice store (memmap, whole batches)"] > 0
    paper = out["paper"].loc["byol"]
    assert paper["precision"] == "32-true" and paper["img_s"] > 0 and paper["paper_table1"] == "10 d 12 h"
    assert paper["speedup"] == paper["paper_h"] / paper["projected_h"] and paper["paper_h"] == 252
    text = capsys.readouterr().out
    assert "overhead" in text and "Table 1" in text and "slices/s" in text and "summary" in text
