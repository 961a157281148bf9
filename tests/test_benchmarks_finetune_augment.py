"""benchmarks/finetune_augment.py runs at smoke size (no timing assertions)."""

import numpy as np
import torch

from benchmark_modules import load_benchmark


def test_benchmark_runs_at_smoke_size(capsys):
    bench = load_benchmark("finetune_augment")
    out = bench.main(["--profile", "smoke", "--repeats", "1", "--batch", "4", "--slices", "16", "--device", "cpu",
                      "--size", "16", "--input-batch", "4"])
    inputs, per_batch, fit = out["input_path"], out["per_batch"], out["fit"]
    assert list(inputs.index) == [bench.OLD, bench.NEW, bench.FLOOR] and (inputs["img_s"] > 0).all()
    assert inputs.loc[bench.OLD, "vs_before"] == 1
    assert np.isclose(inputs.loc[bench.NEW, "vs_before"], inputs.loc[bench.NEW, "img_s"] / inputs.loc[bench.OLD, "img_s"])
    assert list(per_batch.index) == ["flip, batched", "MONAI RandFlip + RandRotate, per slice",
                                     "flip + rotation, batched (ours)", "fine-tuning step (no augmentation)"]
    assert np.isfinite(per_batch.to_numpy()).all() and list(fit.index) == ["flip", "monai"]
    text = capsys.readouterr().out
    assert fit.loc["flip", "vs_flip"] == 1 and "whole fine-tuning run" in text and "input path alone" in text


def test_both_input_paths_give_a_network_batch():
    paths = load_benchmark("finetune_augment").input_paths("cpu", size=12, batch=3, n=6)
    for name, fn in paths.items():
        x = fn()
        assert x.shape == (3, 3, 12, 12) and x.dtype == torch.float32 and torch.isfinite(x).all(), name
