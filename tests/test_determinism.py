"""Same seed, same machine -> bit-identical encoders, results tables and heat maps.

A smoke-size study (stores, one pre-training, a small fine-tuning grid on a given-split and a
cross-validated task, Grad-CAM) is run twice into two folders. Every store build draws a new
salt for the patient hashes, so this also checks that the brain task's folds do not move.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_lib import explain
from ssl_lib import finetune as ft
from ssl_lib import pretrain as pt
from ssl_lib.data.prepare import prepare_stores
from ssl_lib.data.store import SliceStore
from ssl_lib.paths import StudyPaths

pytestmark = pytest.mark.slow  # studies, training runs or subprocesses: minutes (make test-fast skips)


def _study(out):
    paths = StudyPaths(out)
    prepare_stores(out, "smoke", seed=0, progress=False)
    torch.set_num_threads(1)
    result = pt.pretrain("mocov2", SliceStore(paths.store("lidc")), paths.pretrain("mocov2"), profile="smoke",
                         epochs=1, progress=False)
    ft.run_grid(out, ["covid", "brain"], ["random", "mocov2"], fractions=[1.0, 0.5], seeds=[0, 1], profile="smoke",
                workers=1, progress=False)
    explain.run_gradcam(out, "covid", 1.0, 0, profile="smoke")
    explain.run_gradcam(out, "brain", 1.0, 0, profile="smoke", fold=0)
    return result


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    threads = torch.get_num_threads()
    try:
        outs = [tmp_path_factory.mktemp(f"run{k}") for k in range(2)]
        for out in outs:
            _study(out)
        return outs
    finally:
        torch.set_num_threads(threads)


def test_encoders_are_bit_identical(twice):
    a, b = (sorted((StudyPaths(o).pretrain("mocov2") / "encoders").glob("*.pt")) for o in twice)
    assert [p.name for p in a] == [p.name for p in b] and a
    for pa, pb in zip(a, b):
        sa, sb = torch.load(pa, weights_only=True), torch.load(pb, weights_only=True)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), pa.name


def test_results_tables_are_bit_identical(twice):
    a, b = (ft.read_results(o).drop(columns=["time_s"]) for o in twice)
    key = ["task", "init", "fraction", "seed", "fold"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    assert len(a) == 2 * 2 * 2 * 2
    assert set(a.loc[a["task"] == "brain", "fold"]) == {0, 1}
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for r in a.itertuples():
        pa, pb = (pd.read_csv(ft.run_file(o, "predictions", r.task, r.init, r.fraction, r.seed, r.fold)) for o in twice)
        pd.testing.assert_frame_equal(pa, pb, check_exact=True)


def test_heat_maps_are_bit_identical(twice):
    for task, seed, fold in (("covid", 0, -1), ("brain", 0, 0)):
        ha, hb = (explain.HeatMaps.load(explain.cache_path(o, task, 1.0, seed, fold)) for o in twice)
        assert ha.inits == hb.inits == ["random", "mocov2"] and np.array_equal(ha.indices, hb.indices)
        for init in ha.inits:
            assert np.array_equal(ha.maps[init], hb.maps[init]), (task, init)
