"""benchmarks/finetune_augment.py runs at smoke size (no timing assertions)."""

import numpy as np

from benchmark_modules import load_benchmark


def test_benchmark_runs_at_smoke_size(capsys):
    bench = load_benchmark("finetune_augment")
    out = bench.main(["--profile", "smoke", "--repeats", "1", "--batch", "4", "--slices", "16", "--device", "cpu"])
    per_batch, fit = out["per_batch"], out["fit"]
    assert list(per_batch.index) == ["batched flip (ours)", "MONAI RandFlip", "MONAI RandFlip + RandRotate",
                                     "fine-tuning step (no augmentation)"]
    assert np.isfinite(per_batch.to_numpy()).all() and list(fit.index) == ["flip", "monai"]
    assert fit.loc["flip", "vs_flip"] == 1 and "whole fine-tuning run" in capsys.readouterr().out
