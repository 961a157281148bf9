"""The prepared GPU check runs end to end at smoke size on the CPU (the code path, not the speed)."""

import numpy as np

from benchmark_modules import load_benchmark


def test_gpu_check_runs_at_smoke_size_on_cpu(capsys):
    bench = load_benchmark("gpu_check")
    out = bench.main(["--device", "cpu", "--profile", "smoke", "--methods", "byol", "mocov2", "--steps", "1",
                      "--warmup", "1", "--ref-steps", "1", "--ft-epochs", "1", "--ft-patients", "24"])
    pre = out["pretrain"]
    assert list(pre.index) == ["byol", "mocov2"] and (pre["img_s"] > 0).all()
    assert pre.loc["byol", "paper_table1"] == "10 d 12 h"
    np.testing.assert_allclose(pre["speedup"], pre["paper_h"] / pre["projected_h"])
    ref = out["reference"]
    assert {("byol", "ours"), ("mocov2", "lightly example loop")} <= set(ref.index)
    f = out["finetune"].iloc[0]
    assert f["full_epochs"] == 1 and f["full_phase_img_s"] > 0 and f["train_size"] > 0
    assert np.isclose(f["projected_grid_h_one_gpu"],
                      bench.PAPER_GRID_RUNS * 1 * 1500.0 / f["full_phase_img_s"] / 3600)
    text = capsys.readouterr().out
    assert "Table 1" in text and "reference loop" in text and "summary" in text and "vs lightly loop" in text
