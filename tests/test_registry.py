"""The method registry (ssl_lib.pretrain.registry): built-ins in order, a toy method in one file, no import circle.

The toy method (``tests/toy_method.py``) is registered only through ``SSL_CT_EXTRA_METHODS``, in a
fresh interpreter, and must reach pre-training, initialisations, report labels, Grad-CAM's init
list, the study's steps and the benchmarks with no edit of ``ssl_lib``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssl_lib.errors import SslCtError
from ssl_lib.pretrain import registry

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the built-ins
def test_builtin_methods_in_order_with_labels(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    assert registry.method_names() == ("byol", "swav", "mocov2", "spark")
    assert [registry.init_label(i) for i in registry.init_order()] == ["Random", "BYOL", "SwAV", "MoCoV2", "SparK"]
    assert registry.init_label("spark-released") == "spark-released"
    for spec in registry.methods():
        assert set(spec.profiles) >= {"smoke", "quick", "paper"} and spec.summary.startswith("**")
        assert spec.paper["params_m"] > 20 and spec.paper["hours"] > 200 and spec.step_cost > 0
        assert spec.paper["table1_note"].startswith(f"The paper's Table 1 lists {spec.paper['params_m']} M")
        # a preview of the trained module (SparK's reconstruction) comes with its notebook text
        assert ("preview" in vars(spec.module_class)) == bool(spec.preview_note), spec.name
        assert registry.get_config(spec.name, "smoke") == spec.profiles["smoke"]
        assert registry.method_class(spec.name) is spec.module_class
    assert [registry.get_method(m).step_cost for m in registry.method_names()] == [2.4, 3.0, 1.7, 2.6]


def test_unknown_method_is_a_library_error_with_a_suggestion():
    with pytest.raises(SslCtError, match=r"unknown pre-training method 'byl' \(did you mean 'byol'\?\)") as err:
        registry.get_method("byl")
    assert isinstance(err.value, ValueError)


def test_public_names_follow_the_registry(monkeypatch):
    import ssl_lib.pretrain as pt

    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    assert pt.METHODS == registry.method_names() and list(pt.PROFILES["quick"]) == list(pt.METHODS)
    assert pt.CONFIG_CLASSES["spark"] is registry.get_method("spark").config_class


def test_a_broken_extra_module_is_named(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "tests.no_such_method")
    with pytest.raises(registry.PretrainError, match="tests.no_such_method"):
        registry.methods()


# ----------------------------------------------------------------------------- a fifth method in one file
TOY_SCRIPT = r'''
import json, sys
from pathlib import Path
import numpy as np
import torch

torch.set_num_threads(1)
out = Path(sys.argv[1])
from ssl_lib.pretrain import registry, pretrain, get_config, get_method, METHODS
from ssl_lib.data.store import SliceRecord, write_store
from ssl_lib.paths import StudyPaths

rng = np.random.default_rng(0)
store = write_store((SliceRecord(rng.integers(0, 255, (32, 32), dtype=np.uint8), patient=f"p{i // 4}", source=f"s{i}")
                     for i in range(32)), out / "stores" / "lidc", size=32, name="lidc")
run = pretrain("toy", store, StudyPaths(out).pretrain("toy"), profile="smoke", max_steps=2, progress=False)

import ssl_lib.explain as explain, ssl_lib.finetune as ft, ssl_lib.report as report, ssl_lib.study as study
from ssl_lib.inits import apply_init, load_init
from ssl_lib.models.classifier import Classifier
sys.path.insert(0, "tests")
from benchmark_modules import load_benchmark

init = load_init("toy", out, "resnet18")
model = apply_init(Classifier("resnet18", 2), init)
steps = {s.name: s for s in study.STEPS}
print(json.dumps({
    "methods": list(METHODS), "label": get_method("toy").label, "config": type(get_config("toy", "smoke")).__name__,
    "steps": run.global_step, "encoders": [p.name for p in run.encoders],
    "init_epoch": init.epoch, "loaded": bool(torch.equal(model.backbone.conv1.weight, init.state["conv1.weight"])),
    "default_inits": ft.default_inits(out), "report_label": report.INIT_LABELS.get("toy"),
    "report_order": report._order_inits(["toy", "spark", "random"]), "explain_inits": list(explain.INITS),
    "explain_label": explain.init_label("toy"),
    "step": [steps["pretrain_toy"].notebook, steps["pretrain_toy"].cost, "pretrain_toy" in steps["finetune"].after],
    "grid_speed": list(load_benchmark("grid_speed").METHODS), "study_speed": list(load_benchmark("study_speed").METHODS),
}))
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    env = {**os.environ, registry.ENV_VAR: "tests.toy_method", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", TOY_SCRIPT, str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_toy_method_is_registered_from_one_file(toy):
    assert toy["methods"] == ["byol", "swav", "mocov2", "spark", "toy"]
    assert toy["label"] == "Toy" and toy["config"] == "ToyConfig"


def test_toy_method_pretrains_and_its_encoder_is_an_init(toy):
    assert toy["steps"] == 2 and toy["encoders"] == ["epoch_0001.pt"]
    assert toy["init_epoch"] == 1 and toy["loaded"] and toy["default_inits"] == ["random", "toy"]


def test_toy_method_reaches_tables_gradcam_runner_and_benchmarks(toy):
    assert toy["report_label"] == "Toy" and toy["report_order"] == ["random", "spark", "toy"]
    assert toy["explain_inits"][-1] == "toy" and toy["explain_label"] == "Toy"
    assert toy["step"] == ["notebooks/06_pretrain_toy.ipynb", 0.5, True]  # generated at run time (no committed one)
    assert toy["grid_speed"][-1] == "toy" and toy["study_speed"][-1] == "toy"


def test_toy_method_is_not_seen_without_the_variable(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    assert "toy" not in registry.method_names()


def test_builtin_templates_keep_their_paths():
    from ssl_lib.templates import pretrain_file

    assert pretrain_file(0, "byol") == "notebooks/02_pretrain_byol.ipynb"
    assert pretrain_file(3, "spark") == "notebooks/05_pretrain_spark.ipynb"
    assert pretrain_file(4, "toy") == "notebooks/06_pretrain_toy.ipynb"
    assert all((REPO / pretrain_file(i, m)).is_file() for i, m in enumerate(registry.method_names()))


# ----------------------------------------------------------------------------- no import circle
# (the circle test of all ssl_lib is tests/test_import_graph.py; it walks deferred imports too)
def test_method_modules_import_only_base_of_the_package():
    from test_import_graph import import_graph

    graph = import_graph()
    assert graph["ssl_lib.pretrain.registry"] >= {"ssl_lib.pretrain.base"}
    for spec_module in registry.METHOD_MODULES:
        own = {m for m in graph[spec_module] if m.startswith("ssl_lib.pretrain")}
        assert own == {"ssl_lib.pretrain.base"}, (spec_module, own)


# ----------------------------------------------------------------------------- the momentum helper
def test_momentum_copies_are_frozen_and_follow_their_online_modules(monkeypatch):
    import torch

    from ssl_lib.pretrain import build_module, count_parameters

    module = build_module("mocov2", "smoke")
    pairs = module.momentum_pairs()
    assert [type(o) for o, _ in pairs] == [type(module.backbone), type(module.projection_head)]
    assert all(not p.requires_grad for _, copy in pairs for p in copy.parameters())
    copies = sum(p.numel() for _, copy in pairs for p in copy.parameters())
    assert count_parameters(module)["momentum"] == copies > 0
    with torch.no_grad():
        for p in module.backbone.parameters():
            p.add_(1.0)
    before = module.backbone_momentum.conv1.weight.clone()
    monkeypatch.setattr(module, "momentum_now", lambda: 0.75)
    assert module.update_momentum_copies() == 0.75
    torch.testing.assert_close(module.backbone_momentum.conv1.weight, 0.75 * before + 0.25 * module.backbone.conv1.weight)
