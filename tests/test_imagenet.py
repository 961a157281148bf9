"""The ImageNet baseline (issue 22): a torchvision ResNet weights file the user gives the study
(``--param imagenet_weights=...``; nothing is downloaded) becomes the init ``imagenet``, labelled
"ImageNet (supervised)", beside random and the pre-training methods in fine-tuning, reduction,
Grad-CAM and the results; its path is written nowhere.

The weights files are written here from ``torchvision.models.resnet18()`` (random weights in
torchvision's layout, 47 MB). The last test runs the smoke study through the runner (minutes)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from ssl_lib import explain, report, runs, study
from ssl_lib import finetune as ft
from ssl_lib.inits import InitError, apply_init, file_sha256, imagenet_file, load_init, use_imagenet_weights
from ssl_lib.models import build_backbone, encoder_state_dict
from ssl_lib.models.classifier import Classifier
from ssl_lib.paths import StudyPaths
from ssl_lib.pretrain import registry
from ssl_lib.reduction import stop_reducing
from ssl_lib.runfolder import MARK, StudyError
from tools.nbtemplate import write_notebook

#: A folder name standing for one that names a person: no output byte may hold it.
MARKER = "Doe_Jane_MARKER_1234"


def _weights(arch: str = "resnet18", seed: int = 7, half: bool = False) -> dict[str, torch.Tensor]:
    """torchvision's ``arch`` with weights drawn from ``seed``: not seed 0, from which a run's random
    init (``torch.manual_seed(0)`` before the model is built) would draw the very same weights."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)()
    return (net.half() if half else net).state_dict()


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """A resnet18 weights file in torchvision's layout (fc included), in a folder named like a patient."""
    path = tmp_path_factory.mktemp("w") / MARKER / "resnet18.pth"
    path.parent.mkdir()
    torch.save(_weights(), path)
    return path


def _same_backbone(model, state) -> bool:
    own = model.backbone.state_dict() if hasattr(model, "backbone") else model.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))


# ----------------------------------------------------------------------------- reading the file
def test_a_torchvision_weights_file_loads_into_the_backbone(r18, tmp_path):
    state = _weights()
    for init in (load_init(r18, arch="resnet18"), load_init("imagenet", r18, "resnet18")):
        assert init.name == "imagenet" and init.epoch is None
        assert init.ignored == ["fc.bias", "fc.weight"]  # the 1000 ImageNet classes
        assert _same_backbone(apply_init(Classifier("resnet18", 2), init), state)
    # the common wrappers, a DataParallel prefix, and a file without num_batches_tracked buffers
    wrapped = {"state_dict": state, "epoch": 90}
    prefixed = {"model": {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}}
    for name, obj in (("wrapped.pth", wrapped), ("prefixed.pth", prefixed)):
        torch.save(obj, tmp_path / name)
        init = load_init("imagenet", tmp_path / name, "resnet18")
        assert _same_backbone(apply_init(Classifier("resnet18", 3), init), state), name
    assert "num_batches_tracked" in init.notes[0]


def test_weights_of_another_resnet_or_no_state_dict_fail_with_one_clear_error(r18, tmp_path):
    r50 = tmp_path / "resnet50.pth"
    torch.save(_weights("resnet50", half=True), r50)  # half precision: half the disk; the shapes are what counts
    with pytest.raises(InitError, match=r"resnet50\.pth: expects resnet18 weights \(the study's backbone\), the file "
                                        r"has resnet50 weights \(e\.g\. layer1\.0\.conv3\.weight, which a resnet18 has not\)"):
        load_init("imagenet", r50, "resnet18")
    with pytest.raises(InitError, match=r"resnet18\.pth: expects resnet34 weights .* has resnet18 weights .*no layer1\.2\.conv1"):
        load_init(r18, arch="resnet34")
    cut = {k: v for k, v in _weights().items() if k != "layer4.1.conv2.weight"}
    torch.save(cut, tmp_path / "cut.pth")
    with pytest.raises(InitError, match=r"cut\.pth: does not fit torchvision resnet18: 1 backbone keys missing .*layer4\.1\.conv2"):
        load_init("imagenet", tmp_path / "cut.pth", "resnet18")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    torch.save({"weights": {"a": torch.zeros(1)}}, tmp_path / "other.pth")
    for name, what in (("tensor.pth", "a Tensor"), ("other.pth", r"a dict with top-level keys \['weights'\]")):
        with pytest.raises(InitError, match=rf"{name}: not a torchvision ResNet state dict .*holds {what}"):
            load_init("imagenet", tmp_path / name, "resnet18")
    torch.save({"state_dict": _weights(), "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth")
    with pytest.raises(InitError, match=r"pickled\.pth: not a file of plain weights \(torch\.load with weights_only=True"):
        load_init("imagenet", tmp_path / "pickled.pth", "resnet18")  # never unpickles code
    with pytest.raises(InitError, match="nothere.pth: no such weights file"):
        load_init("imagenet", tmp_path / "nothere.pth", "resnet18")


# ----------------------------------------------------------------------------- the study's copy
def test_the_study_keeps_a_copy_of_its_weights_without_their_path(r18, tmp_path):
    out = tmp_path / "out"
    enc = StudyPaths(out).pretrain("spark") / "encoders"
    enc.mkdir(parents=True)
    torch.save(encoder_state_dict(build_backbone("resnet18")), enc / "epoch_0001.pt")
    (enc / "epoch_0001.json").write_text(json.dumps({"method": "spark", "epoch": 1, "arch": "resnet18"}))
    assert ft.default_inits(out) == ["random", "spark"]  # a study without ImageNet weights has no such init
    with pytest.raises(InitError, match=r"no ImageNet weights; .*--param imagenet_weights="):
        load_init("imagenet", out, "resnet18")

    use_imagenet_weights(out, r18, "resnet18")
    assert ft.default_inits(out) == ["random", "imagenet", "spark"]
    init = load_init("imagenet", out, "resnet18")  # what every worker and cluster job reads: no path needed
    assert init.name == "imagenet" and _same_backbone(apply_init(Classifier("resnet18", 2), init), _weights())
    card = json.loads(imagenet_file(out).with_suffix(".json").read_text())
    assert card["sha256"] == file_sha256(r18) and card["arch"] == "resnet18"
    for f in out.rglob("*"):
        assert not f.is_file() or MARKER.encode() not in f.read_bytes(), f"{f} holds the weights' path"
    with pytest.raises(InitError, match="encoder is a resnet18, resnet50 was asked for"):
        load_init("imagenet", out, "resnet50")

    stamp = imagenet_file(out).stat().st_mtime_ns
    use_imagenet_weights(out, r18, "resnet18")  # the same file again: nothing rewritten
    assert imagenet_file(out).stat().st_mtime_ns == stamp
    other = tmp_path / "other.pth"
    torch.save(_weights(seed=1), other)
    StudyPaths(out).finetune.mkdir(exist_ok=True)
    pd.DataFrame([{"task": "covid", "init": "imagenet", "fraction": 1.0, "seed": 0, "fold": -1,
                   "profile": "smoke", "f1": 0.5}]).to_csv(StudyPaths(out).results, index=False)
    with pytest.raises(InitError, match=r"results hold runs of other ImageNet weights"):
        use_imagenet_weights(out, other, "resnet18")  # would mix two sets of weights under one name
    StudyPaths(out).results.unlink()
    use_imagenet_weights(out, other, "resnet18")  # no runs yet: replaced
    assert _same_backbone(apply_init(Classifier("resnet18", 2), load_init("imagenet", out, "resnet18")), _weights(seed=1))


@pytest.mark.slow
def test_the_grid_runs_the_imagenet_init_on_worker_processes_from_the_study_copy(r18, tmp_path):
    """Workers and cluster jobs get the init by name and read the study's copy; the paper profile's
    choice of the pre-training epoch ("best") does not apply to it (it has none)."""
    from test_finetune import PROFILE, export_encoders, make_stores

    out = tmp_path / "out"
    make_stores(out)
    export_encoders(out, "byol", [1, 2])
    use_imagenet_weights(out, r18, "resnet18")
    assert ft.init_name(r18, out, "resnet18") == "imagenet"  # the file itself names the same init
    prof = ft.get_profile(PROFILE, linear_epochs=1, full_epochs=0, pretrain_epoch="best")
    res = ft.run_grid(out, ["covid"], fractions=[1.0, 0.5], seeds=[0], profile=prof, workers=2, progress=False,
                      stop_f1=None)
    assert ft.default_inits(out) == ["random", "imagenet", "byol"]
    assert len(res) == 6 and set(res["init"]) == {"random", "imagenet", "byol"}
    assert (res.loc[res["init"] == "imagenet", "pretrain_epoch"] == -1).all()
    assert ft.run_file(out, "models", "covid", "imagenet", 1.0, 0).is_file()  # what Grad-CAM explains
    probs = {i: runs.load_predictions(out, "covid", i, 0.5, 0).filter(like="prob_").to_numpy() for i in ("random", "imagenet")}
    assert not np.allclose(probs["random"], probs["imagenet"])  # the workers loaded the weights
    selection = pd.read_csv(StudyPaths(out).finetune / "epoch_selection.csv")
    assert set(selection["method"]) == {"byol"}


# ----------------------------------------------------------------------------- where the init shows
def test_imagenet_is_a_baseline_in_labels_order_tables_and_the_stopping_rule():
    assert registry.init_label("imagenet") == "ImageNet (supervised)"
    assert registry.init_order() == ("random", "byol", "swav", "mocov2", "spark")  # what every study has
    assert registry.init_order(imagenet=True)[:2] == ("random", "imagenet")
    assert registry.order_inits(["spark", "x-released", "imagenet", "random"]) == ["random", "imagenet", "spark",
                                                                                    "x-released"]
    rows = [{"task": "covid", "init": i, "fraction": f, "seed": s, "fold": -1, "profile": "smoke",
             "auc": a, "f1": a, "f1_seed": a, "accuracy": a, "train_size": 10, "train_per_class": "[5, 5]"}
            for f in (1.0, 0.5) for s in (0, 1) for i, a in (("random", 0.5 + s / 100), ("imagenet", 0.9 - s / 100),
                                                            ("spark", 0.6 + s / 100))]
    res = pd.DataFrame(rows)
    # the paper's rule reads the methods only: ImageNet above 0.7 does not keep the reduction going
    assert stop_reducing(res, "covid", 0.5, inits=["random", "imagenet", "spark"])
    assert "imagenet" not in report.stopping_table(res, metric="f1").columns
    table = report.table2(res, metrics=("auc",))
    assert list(table.index) == ["Random", "ImageNet (supervised)", "SparK"]
    assert table.loc["ImageNet (supervised)", ("COVID-19", "auc")] == "0.895 ± 0.007"
    head = report.headline(res).reset_index()
    assert "ImageNet (supervised)" in set(head["init"])


def test_grad_cam_explains_every_model_fine_tuning_saved(tmp_path):
    for init in ("spark", "imagenet", "random"):
        path = explain.model_path(tmp_path, "covid", init, 1.0, 0)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    assert explain.study_inits(tmp_path, "covid", 1.0, 0) == ["random", "imagenet", "spark"]
    assert explain.study_inits(tmp_path, "covid", 0.5, 0) == [] and explain.study_inits(tmp_path, "organs") == []
    assert explain.init_label("imagenet") == "ImageNet (supervised)"


# ----------------------------------------------------------------------------- the runner
def test_the_runner_checks_the_weights_before_anything_is_written(r18, tmp_path):
    out = tmp_path / "out"
    assert study.check_request(out, "smoke", None, {"imagenet_weights": str(r18)}, 1)
    r50 = tmp_path / "resnet50.pth"
    torch.save(_weights("resnet50", half=True), r50)
    with pytest.raises(StudyError, match=r"--param imagenet_weights: .*resnet50\.pth: expects resnet18 weights .*"
                                         r"file has resnet50 weights \(e\.g\. layer1\.0\.conv3\.weight"):
        study.check_request(out, "quick", None, {"imagenet_weights": str(r50)}, 1)
    with pytest.raises(StudyError, match=r"imagenet_weights=.*: not a weights file"):
        study.check_request(out, "smoke", None, {"imagenet_weights": str(tmp_path)}, 1)
    with pytest.raises(StudyError, match=r"imagenet_weights=.*gone\.pth: no such file or folder"):
        study.check_request(out, "smoke", None, {"imagenet_weights": str(tmp_path / "gone.pth")}, 1)
    assert study.main(["study", "--profile", "quick", "--output", str(out), "--no-book",
                       "--param", f"imagenet_weights={r50}"]) == 1
    assert not out.exists()


@pytest.mark.slow
def test_the_manifest_keeps_the_weights_as_a_fingerprint_of_their_content(r18, tmp_path, monkeypatch):
    nb = tmp_path / "ft.ipynb"
    write_notebook(nb, [("params", "profile = 'quick'\noutput_dir = 'x'\nimagenet_weights = ''"),
                        ("code", "from pathlib import Path\nprint(imagenet_weights)\n"
                                 "Path(output_dir, 'ft').mkdir(exist_ok=True)")])
    monkeypatch.setattr(study, "STEPS", (study.Step("ft", str(nb), outputs=("ft",)),))
    out = tmp_path / "out"
    weights = tmp_path / MARKER / "w.pth"
    weights.parent.mkdir()
    weights.write_bytes(r18.read_bytes())
    study.run_study(out, "smoke", extra={"imagenet_weights": str(weights)}, book=False)
    manifest = (out / MARK / "manifest.json").read_text()
    assert MARKER not in manifest
    assert set(json.loads(manifest)["steps"]["ft"]["params"]["imagenet_weights"]) == {"file"}  # a salted hash
    executed = (out / "notebooks" / "ft.ipynb").read_text()
    assert MARKER not in executed and study.REDACTED in executed
    study.run_study(out, "smoke", extra={"imagenet_weights": str(weights)}, book=False)  # unchanged: skipped
    torch.save(_weights(seed=2), weights)  # other weights at the same path
    with pytest.raises(StudyError, match=r"imagenet_weights: a different file"):
        study.run_study(out, "smoke", extra={"imagenet_weights": str(weights)}, book=False)


# ----------------------------------------------------------------------------- the whole study
@pytest.mark.slow
def test_imagenet_weights_run_through_the_whole_smoke_study(r18, tmp_path):
    """Random, ImageNet and MoCo v2 (the cheapest pre-training) through every step of the smoke
    study from the runner's command line; notebook 06 fine-tunes the ImageNet init."""
    from study_runs import check_study, run_cli

    out = tmp_path / "study"
    run = run_cli(out, "--methods", "mocov2", "--param", f"imagenet_weights={r18}", "--param", "init=imagenet")
    results = check_study(out, run, study.study_steps(["mocov2"]), ["random", "imagenet", "mocov2"])
    # fine-tuning and the reduction: every task at every fraction of the profile
    ran = results[results["init"] == "imagenet"]
    assert set(ran["task"]) == {"covid", "organs", "brain"} and set(ran["fraction"]) == {1.0, 0.5}
    assert (ran["pretrain_epoch"] == -1).all()
    probs = {i: runs.load_predictions(out, "covid", i, 1.0, 0, -1).filter(like="prob_").to_numpy()
             for i in ("random", "imagenet")}
    assert not np.allclose(probs["random"], probs["imagenet"])  # the weights were loaded: another model
    assert json.loads(imagenet_file(out).with_suffix(".json").read_text())["sha256"] == file_sha256(r18)
    # Grad-CAM: the ImageNet model's heat maps beside the others
    heat = explain.HeatMaps.load(explain.cache_path(out, "covid", 1.0, 0))
    assert heat.inits == ["random", "imagenet", "mocov2"]
    html = out / "book" / "_build" / "html" / "notebooks"
    assert "ImageNet (supervised)" in (html / "08_gradcam.html").read_text()
    # the results: tables, verdicts and the reduction chapter name it
    page = (html / "09_results.html").read_text()
    assert page.count("ImageNet (supervised)") >= 3
    assert "ImageNet (supervised)" in (html / "07_reduction.html").read_text()
    assert "imagenet" in (html / "06_finetune.html").read_text()
    # the weights' path is in no output: stores, logs, notebooks, the book, the manifest
    for f in out.rglob("*"):
        assert not f.is_file() or MARKER.encode() not in f.read_bytes(), f"{f.relative_to(out)} holds the weights' path"
