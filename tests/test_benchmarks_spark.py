"""benchmarks/spark_vs_official.py: our SparK step runs at smoke size (no timing assertions).

The official part needs a local copy of the official SparK ``pretrain/`` folder, which is never
part of this repository: set ``SPARK_OFFICIAL=/path/to/SparK/pretrain`` to run it too (then our
model is also checked against the official code on identical weights).
"""

import os

import numpy as np
import pytest

from benchmark_modules import load_benchmark

OFFICIAL = os.environ.get("SPARK_OFFICIAL")


def test_own_step_runs_at_smoke_size(capsys):
    bench = load_benchmark("spark_vs_official")
    table = bench.main(["--arch", "resnet18", "--size", "64", "--batch", "2", "--width", "64",
                        "--steps", "1", "--warmup", "0", "--device", "cpu"])
    assert list(table.index) == ["ours", "ours, float32 contiguous", "ours + crop/flip"]
    assert np.isfinite(table[["s_per_step", "img_s"]].to_numpy()).all() and (table["img_s"] > 0).all()
    assert "decoder width 64" in capsys.readouterr().out


def test_official_state_dict_names_map_onto_ours():
    import torch

    from ssl_lib.models.backbone import build_backbone
    from ssl_lib.models.spark import SparK

    bench = load_benchmark("spark_vs_official")
    ours = SparK(build_backbone("resnet18"), image_size=64, decoder_width=64)
    official_names = {"sparse_encoder.sp_cnn.conv1.weight": "encoder.conv1.weight",
                      "densify_norms.0.running_mean": "densify_norms.3.running_mean",
                      "densify_projs.3.weight": "projs.0.weight", "mask_tokens.1": "mask_tokens.2",
                      "dense_decoder.dec.0.up_sample.weight": "decoder.0.up.weight",
                      "dense_decoder.dec.4.conv.4.bias": "decoder.4.conv.4.bias",
                      "dense_decoder.proj.weight": "head.weight"}
    mapped = bench.official_to_ours({k: torch.zeros(1) for k in official_names})
    assert mapped.keys() == set(official_names.values()) and mapped.keys() <= set(ours.state_dict())


@pytest.mark.skipif(not OFFICIAL, reason="no local copy of the official SparK code (SPARK_OFFICIAL)")
def test_against_the_official_code():
    bench = load_benchmark("spark_vs_official")
    check = bench.check_against_official(bench.load_official(OFFICIAL), arch="resnet18", width=64)
    assert check["loss_abs_diff"] < 1e-12 and check["reconstruction_max_abs_diff"] < 1e-10
    assert check["gradient_max_rel_diff"] < 1e-9
    table = bench.run(OFFICIAL, arch="resnet18", size=64, batch=2, width=64, steps=1, warmup=0)
    assert list(table.index) == ["official", "ours", "ours, float32 contiguous", "ours + crop/flip"] and table.loc["official", "vs_official"] == 1
