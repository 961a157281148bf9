"""The prepared GPU check runs end to end at smoke size on the CPU (the code path, not the speed)."""

import numpy as np
import pytest

from benchmark_modules import load_benchmark


@pytest.mark.slow
def test_gpu_check_runs_at_smoke_size_on_cpu(capsys):
    bench = load_benchmark("gpu_check")
    out = bench.main(["--device", "cpu", "--profile", "smoke", "--methods", "byol", "mocov2", "--steps", "2",
                      "--warmup", "1", "--epoch-steps", "3", "--sync-steps", "1", "--ref-steps", "1",
                      "--input-repeats", "1", "--ft-epochs", "1", "--ft-patients", "24"])
    pre = out["pretrain"]
    assert list(pre.index) == ["byol", "mocov2"] and (pre["img_s"] > 0).all() and (pre["loader_img_s"] > 0).all()
    assert pre.loc["byol", "paper_table1"] == "10 d 12 h"
    np.testing.assert_allclose(pre["speedup"], pre["paper_h"] / pre["projected_h"])
    assert (pre["peak_gb"] == "n/a").all()  # no GPU memory on the CPU
    assert list(pre["paper_gb"]) == [14.4, 18.7]  # Table 1: BYOL 14.4 GB, MoCo v2 18.7 GB
    syncs = pre["syncs_per_step"]
    assert (syncs == "n/a").all() if bench.count_syncs_function() is None else (syncs.astype(float) >= 0).all()
    ref = out["reference"]
    assert {("byol", "ours"), ("mocov2", "lightly example loop")} <= set(ref.index)
    inp = out["input_path"]
    assert (inp["img_s"] > 0).all() and inp.loc["per-slice MONAI (before)", "vs_before"] == 1
    f = out["finetune"].iloc[0]
    assert f["full_epochs"] == 1 and f["full_phase_img_s"] > 0 and f["train_size"] > 0
    assert f["peak_gb"] == "n/a" and f["paper_gb"] == 14.4
    assert np.isclose(f["projected_grid_h_one_gpu"],
                      bench.PAPER_GRID_RUNS * 1 * 1500.0 / f["full_phase_img_s"] / 3600)
    text = capsys.readouterr().out
    for item in ("Table 1", "steady-state", "loader_img_s", "peak_gb", "paper_gb", "syncs_per_step",
                 "projected_900_epochs", "reference loop", "input path", "batched (ours)", "summary",
                 "vs lightly loop", "syncs/step", "loader alone"):
        assert item in text, item


def test_steady_timer_leaves_out_warmup_and_every_epochs_first_step():
    bench = load_benchmark("gpu_check")
    timer = bench.SteadyTimer(warmup=2)

    class Module:
        device = type("D", (), {"type": "cpu"})()

    images = (np.zeros((4, 1, 2, 2)),)
    kept = []
    for epoch in range(3):
        timer.on_train_epoch_start(None, Module())
        for batch_idx in range(3):
            before = len(timer.seconds)
            timer.on_train_batch_end(None, Module(), None, images, batch_idx)
            kept.append(len(timer.seconds) > before)
    assert kept == [False, False, True, False, True, True, False, True, True]
    assert bench.total_steps_for(steps=4, warmup=2, epoch_steps=3) == 8  # steps 2, 4, 5, 7 are timed
