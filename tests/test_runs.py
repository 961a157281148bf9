"""The results layer (ssl_lib.runs) and who depends on it: no torch in it, no trainer behind the
report, statistics and Grad-CAM, one set of run names for writers and readers, the grid's own
feature cache, the synthetic flag from the store's meta only."""

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_lib import runs
from ssl_lib.errors import SslCtError
from ssl_lib.paths import StudyPaths

ROOT = Path(__file__).resolve().parent.parent


def _fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter (this repository first on the path); return its stdout."""
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + code],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_results_layer_and_map_statistics_import_no_torch():
    loaded = _fresh("import ssl_lib.runs, ssl_lib.heatmap_stats\n"
                    "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    assert loaded == "[]"


@pytest.mark.slow
def test_report_stats_explain_do_not_import_the_trainer():
    loaded = _fresh("import ssl_lib.report, ssl_lib.stats, ssl_lib.explain, ssl_lib.explain_figures, ssl_lib.present\n"
                    "print([m for m in ('ssl_lib.finetune', 'ssl_lib.cluster') if m in sys.modules])")
    assert loaded == "[]"


# --------------------------------------------------------------------------- the results table
def _row(task="covid", init="random", fraction=1.0, seed=0, **extra):
    return {"task": task, "init": init, "fraction": fraction, "seed": seed, "fold": -1, "profile": "smoke",
            "accuracy": 0.5 + seed / 10} | extra


def test_append_keeps_the_schema_first_and_rewrites_when_columns_differ(tmp_path):
    path = StudyPaths(tmp_path).results
    runs.append_result(path, _row(seed=0))
    runs.append_result(path, _row(seed=1))
    assert list(pd.read_csv(path, nrows=0).columns) == runs.RESULT_COLUMNS
    runs.append_result(path, _row(seed=2, note="extra"))  # a new column: the table is rewritten whole
    table = pd.read_csv(path)
    assert list(table.columns) == runs.RESULT_COLUMNS + ["note"] and len(table) == 3
    assert table["note"].isna().sum() == 2
    assert not list(path.parent.glob(".*tmp*"))  # no temporary file left behind


def test_load_results_keeps_the_last_row_of_a_run(tmp_path):
    path = StudyPaths(tmp_path).results
    for acc in (0.1, 0.9):
        runs.append_result(path, _row(accuracy=acc))
    runs.append_result(path, _row(seed=1))
    assert len(runs.read_results(tmp_path)) == 3
    table = runs.load_results(tmp_path, "smoke")
    assert len(table) == 2 and table.loc[table["seed"] == 0, "accuracy"].item() == 0.9
    assert runs.load_results(tmp_path, "paper").empty


def test_row_files_merge_once_by_run_key(tmp_path):
    results = StudyPaths(tmp_path).results
    a = runs.write_row_file(tmp_path / "rows" / "a.csv", _row(seed=0))
    b = runs.write_row_file(tmp_path / "rows" / "b.csv", _row(seed=1))
    assert runs.merge_row_files(results, [a, b]) == 2 and not a.exists() and not b.exists()
    again = runs.write_row_file(tmp_path / "rows" / "a.csv", _row(seed=0, accuracy=0.0))
    assert runs.merge_row_files(results, [again]) == 0  # that run is in the table already
    assert len(runs.read_results(tmp_path)) == 2 and list(runs.read_results(tmp_path).columns) == runs.RESULT_COLUMNS


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(runs.ResultsError, match="unknown run file kind"):
        runs.run_file(tmp_path, "model", "covid", "random", 1.0, 0)
    bad = StudyPaths(tmp_path).results
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b'"task\n\xff\xfe,"')
    with pytest.raises(runs.ResultsError, match="results.csv"):
        runs.read_results(tmp_path)
    with pytest.raises(FileNotFoundError, match="f1.0_s0.csv"):
        runs.load_predictions(tmp_path, "covid", "random", 1.0, 0)


def test_predictions_and_curves_round_trip(tmp_path):
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    path = runs.run_file(tmp_path, "predictions", "covid", "byol", 0.5, 1)
    runs.write_predictions(path, [4, 7, 9], [0, 1, 1], probs)
    pred = runs.load_predictions(tmp_path, "covid", "byol", 0.5, 1)
    assert list(pred.columns) == ["index", "label", "pred", "prob_0", "prob_1"] and list(pred["pred"]) == [0, 1, 0]
    np.testing.assert_allclose(runs.prediction_probs(pred), probs)
    curves = pd.DataFrame({"epoch": [0, 1], "train_loss": [0.7, 0.5]})
    runs.write_curves(runs.run_file(tmp_path, "curves", "covid", "byol", 0.5, 1), curves, task="covid", init="byol",
                      fraction=0.5, seed=1, fold=-1)
    runs.write_curves(runs.run_file(tmp_path, "curves", "covid", "spark", 0.5, 1), curves, task="covid", init="spark",
                      fraction=0.5, seed=1, fold=-1)
    assert len(runs.load_curves(tmp_path, "covid")) == 4 and set(runs.load_curves(tmp_path, "covid", "byol")["init"]) == {"byol"}


def test_error_classes_share_the_library_base_and_keep_their_old_one():
    from ssl_lib.cluster import GridJobError
    from ssl_lib.data.store import StoreError
    from ssl_lib.explain import ExplainError
    from ssl_lib.metrics import MetricError

    for cls, old in ((runs.ResultsError, ValueError), (ExplainError, ValueError), (StoreError, ValueError),
                     (GridJobError, RuntimeError), (MetricError, ValueError)):
        assert issubclass(cls, SslCtError) and issubclass(cls, old), cls


# --------------------------------------------------------------------------- writers and readers agree
def test_explain_finds_the_models_by_the_results_layers_names(tmp_path, monkeypatch):
    """Rename the run files in runs.py alone: fine-tuning writes and Grad-CAM reads the new names."""
    import ssl_lib.finetune as ft
    from ssl_lib import explain
    from test_finetune import PROFILE, make_stores

    make_stores(tmp_path)
    monkeypatch.setattr(runs, "run_name", lambda fraction, seed, fold=-1: f"renamed-{float(fraction)}-{int(seed)}")
    prof = ft.get_profile(PROFILE, linear_epochs=1, full_epochs=0)
    ft.finetune_run(tmp_path, "covid", "random", fraction=1.0, seed=0, profile=prof)
    model = StudyPaths(tmp_path).finetune / "models" / "covid" / "random" / "renamed-1.0-0.pt"
    assert model.is_file() and explain.model_path(tmp_path, "covid", "random", 1.0, 0) == model
    heat = explain.gradcam_for_inits(tmp_path, "covid", 1.0, 0, max_images=4, device="cpu")
    assert heat.inits == ["random"] and len(heat) == 4
    assert explain.cache_path(tmp_path, "covid", 1.0, 0).name == "covid_renamed-1.0-0.npz"
    assert runs.load_predictions(tmp_path, "covid", "random", 1.0, 0)["prob_1"].between(0, 1).all()


def test_explain_opens_the_store_fine_tuning_reads(tmp_path, monkeypatch):
    """A task whose store has another name than the task: both steps open that store."""
    import ssl_lib.finetune as ft
    from ssl_lib import explain, tasks
    from test_finetune import make_stores

    make_stores(tmp_path)
    shutil.move(StudyPaths(tmp_path).store("covid"), StudyPaths(tmp_path).store("covid_v2"))
    spec = tasks.TaskSpec("lung", "covid_v2", "binary", ("no", "yes"), 1, "given")
    monkeypatch.setitem(tasks._USER, "lung", spec)
    assert tasks.task_store_path(tmp_path, "lung") == StudyPaths(tmp_path).store("covid_v2")
    assert len(ft.load_task_data(tmp_path, "lung").images) > 0
    with pytest.raises(explain.ExplainError, match="no fine-tuned model"):  # the store opened; no models yet
        explain.gradcam_for_inits(tmp_path, "lung")


# --------------------------------------------------------------------------- the synthetic flag
def test_synthetic_flag_comes_from_the_store_meta_only(tmp_path):
    import ssl_lib.finetune as ft
    from ssl_lib.data.store import write_store
    from test_finetune import _records

    paths = StudyPaths(tmp_path)
    write_store(_records(12, 2, True), paths.store("covid"), size=32, name="covid", task="binary",
                class_names=["a", "b"], reader={"kind": "folder", "note": "not synthetic data"})
    paths.synthetic.mkdir(parents=True)
    (paths.synthetic / "synthetic.json").write_text("{}")  # a generator's marker file is not the store's meta
    assert ft.load_task_data(tmp_path, "covid").synthetic is False
    write_store(_records(12, 2, True), paths.store("covid"), size=32, name="covid", task="binary",
                class_names=["a", "b"], extra_meta={"synthetic": True}, overwrite=True)
    data = ft.load_task_data(tmp_path, "covid")
    assert data.synthetic is True and data.store.synthetic is True
    assert json.loads((paths.store("covid") / "meta.json").read_text())["synthetic"] is True


# --------------------------------------------------------------------------- the grid's feature cache
def test_each_grid_owns_its_feature_cache(tmp_path, monkeypatch):
    """Two grids on equal studies compute the same features: nothing is kept between them; within one
    grid the runs of an init share them, and a cache sent to a worker process arrives empty."""
    import ssl_lib.finetune as ft
    from test_finetune import PROFILE, make_stores

    make_stores(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    calls = []
    real = ft._features
    monkeypatch.setattr(ft, "_features", lambda bb, images, *a, **k: calls.append(len(images)) or real(bb, images, *a, **k))
    prof = ft.get_profile(PROFILE, linear_epochs=1, full_epochs=0)
    grid = dict(tasks=["covid"], inits=["random"], fractions=[1.0, 0.5], seeds=[0], profile=prof, progress=False,
                stop_f1=None)
    mine = ft.FeatureCache()
    ft.run_grid(tmp_path / "a", features=mine, **grid)
    first = list(calls)
    # fraction 1.0 computes every training and validation slice (plain and mirrored); 0.5 reuses them
    assert len(first) == 2 and len(mine) == 1
    calls.clear()
    ft.run_grid(tmp_path / "b", **grid)  # the same slices and weights, another grid: computed again
    assert calls == first and len(mine) == 1

    copy = pickle.loads(pickle.dumps(mine))
    assert type(copy) is ft.FeatureCache and len(copy) == 0 and copy.max_bytes == mine.max_bytes


def test_feature_cache_drops_the_oldest_beyond_its_size():
    import torch

    import ssl_lib.finetune as ft

    cache = ft.FeatureCache(max_bytes=1)
    for key in ("a", "b"):
        plain, _ = cache.entry((key,), 4)
        plain.rows(np.arange(4), lambda rows: torch.ones(len(rows), 3))
        cache.trim()
    assert len(cache) == 1 and ("b",) in cache._entries  # the newest stays even when over the limit
