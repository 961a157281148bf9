import json

import numpy as np
import pandas as pd
import pytest
import torch

import ssl_lib.finetune as ft
from ssl_lib.data.store import SliceRecord, StoreError, write_store
from ssl_lib.metrics import compute_metrics
from ssl_lib.models import build_backbone, encoder_state_dict
from ssl_lib.models.classifier import Classifier, load_classifier
from ssl_lib.paths import StudyPaths

PROFILE = ft.get_profile("smoke", batch_size=16)


def _records(n_patients, num_classes, given, size=32, seed=0):
    rng = np.random.default_rng(seed)
    splits = ["train"] * 4 + ["val", "test"]
    for p in range(n_patients):
        label = p % num_classes
        for k in range(2):
            img = rng.integers(0, 80, (size, size)).astype(np.uint8)
            a = 2 + 3 * label
            img[a:a + 8, a:a + 8] = 230  # the class is where the bright square is
            yield SliceRecord(img, f"pat{p}", label, splits[(p // num_classes) % 6] if given else "", f"{p}_{k}")


def make_stores(out):
    paths = StudyPaths(out)
    write_store(_records(24, 2, True), paths.store("covid"), size=32, name="covid", task="binary",
                class_names=["NonCOVID", "COVID"])
    write_store(_records(30, 2, False), paths.store("brain"), size=32, name="brain", task="binary",
                class_names=["no hemorrhage", "hemorrhage"])


def export_encoders(out, method, epochs, arch="resnet18"):
    d = StudyPaths(out).pretrain(method) / "encoders"
    d.mkdir(parents=True, exist_ok=True)
    for ep in epochs:
        torch.manual_seed(ep)
        torch.save(encoder_state_dict(build_backbone(arch)), d / f"epoch_{ep:04d}.pt")
        (d / f"epoch_{ep:04d}.json").write_text(json.dumps({"method": method, "epoch": ep, "arch": arch}))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    make_stores(out)
    export_encoders(out, "spark", [1, 2])
    return out


def _tensors(n=24, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (n, 1, size, size), dtype=torch.uint8, generator=g), torch.arange(n) % 2


def test_linear_phase_freezes_backbone_and_bn_buffers_full_phase_changes_them():
    x, y = _tensors()
    torch.manual_seed(0)
    model = Classifier("resnet18", 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ft.fit(model, x, y, x[:8], y[:8], ft.get_profile(PROFILE, linear_epochs=2, full_epochs=0), mean=0.5, std=0.25)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    bb = [k for k in before if k.startswith("backbone.")]
    assert any("running_mean" in k for k in bb) and any("num_batches_tracked" in k for k in bb)
    for k in bb:  # every weight AND every BN buffer
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert all(p.requires_grad for p in model.parameters())
    res = ft.fit(model, x, y, x[:8], y[:8], ft.get_profile(PROFILE, linear_epochs=0, full_epochs=1, augment="none",
                                                               select_metric="auc"), mean=0.5, std=0.25)
    changed = model.state_dict()
    assert not torch.equal(after["backbone.conv1.weight"], changed["backbone.conv1.weight"])
    assert not torch.equal(after["backbone.bn1.running_mean"], changed["backbone.bn1.running_mean"])
    assert list(res.curves["phase"]) == ["full"]


def test_best_validation_state_is_kept(study):
    data = ft.load_task_data(study, "covid", 32)
    row = ft.finetune_run(study, "covid", "random", profile=ft.get_profile(PROFILE, full_epochs=2), data=data,
                          save=False)
    fit = row["_fit"]
    curves = fit.curves
    assert row["best_epoch"] == curves.loc[curves["val_accuracy"].idxmax(), "epoch"] or \
        curves.loc[curves["epoch"] == row["best_epoch"], "val_accuracy"].item() == curves["val_accuracy"].max()
    split = ft.task_splits(data.store, "covid")
    norm = data.normalised_by(split.train)  # the run's normalisation: its training split's statistics
    val = ft.predict_proba(fit.model, data.images[torch.from_numpy(split.val)], norm.mean, norm.std)
    best = curves.set_index("epoch").loc[row["best_epoch"]]
    assert compute_metrics(data.store.labels[split.val], val)["accuracy"] == pytest.approx(best["val_accuracy"])
    assert row["val_accuracy"] == pytest.approx(best["val_accuracy"])


def test_run_writes_row_model_curves_predictions(study):
    row = ft.finetune_run(study, "covid", "spark", fraction=0.5, seed=1, profile=PROFILE)
    assert row["pretrain_epoch"] == 2 and row["fold"] == -1 and row["profile"] == "smoke"
    assert row["train_size"] == 16 // 2 * 2 and json.loads(row["train_per_class"]) == [8, 8]
    res = ft.read_results(study)
    assert set(ft.RESULT_COLUMNS) <= set(res.columns)
    last = res.iloc[-1]
    assert (last["task"], last["init"], last["fraction"], last["seed"]) == ("covid", "spark", 0.5, 1)
    model, info = load_classifier(ft.run_file(study, "models", "covid", "spark", 0.5, 1))
    assert info["task"] == "covid" and info["image_size"] == 32 and info["std"] > 0 and model.num_classes == 2
    pred = pd.read_csv(ft.run_file(study, "predictions", "covid", "spark", 0.5, 1))
    assert list(pred.columns) == ["index", "label", "pred", "prob_0", "prob_1"]
    m = compute_metrics(pred["label"], pred[["prob_0", "prob_1"]].to_numpy(), seed_variant="negative_class")
    for k in ("accuracy", "auc", "f1", "f1_seed"):
        assert m[k] == pytest.approx(last[k], nan_ok=True)
    curves = pd.read_csv(ft.run_file(study, "curves", "covid", "spark", 0.5, 1))
    assert list(curves["phase"]) == ["linear", "linear", "full"] and "val_f1" in curves


def test_cv_task_uses_fold_of_seed_and_resizes(study):
    row = ft.finetune_run(study, "brain", "random", seed=6, profile=ft.get_profile(PROFILE, image_size=16,
                                                                                   linear_epochs=1, full_epochs=0))
    assert row["fold"] == 1 and row["image_size"] == 16
    assert ft.run_file(study, "models", "brain", "random", 1.0, 6, 1).name == "f1.0_s6_k1.pt"
    assert ft.run_file(study, "models", "brain", "random", 1.0, 6, 1).is_file()


def test_store_that_does_not_fit_the_task(tmp_path):
    write_store(_records(12, 3, True), StudyPaths(tmp_path).store("covid"), size=32, name="covid",
                task="multiclass", class_names=["a", "b", "c"])
    with pytest.raises(StoreError, match="expects 2"):
        ft.finetune_run(tmp_path, "covid", profile=PROFILE)
    with pytest.raises(StoreError, match="not a slice store"):
        ft.finetune_run(tmp_path, "brain", profile=PROFILE)


def test_grid_is_resumable_and_stops(tmp_path, monkeypatch):
    make_stores(tmp_path)
    export_encoders(tmp_path, "byol", [3])
    prof = ft.get_profile(PROFILE, linear_epochs=1, full_epochs=0)
    calls = []
    real = ft.finetune_run
    monkeypatch.setattr(ft, "finetune_run", lambda *a, **k: calls.append(a) or real(*a, **k))
    res = ft.run_grid(tmp_path, ["covid"], fractions=[1.0, 0.5], seeds=[0], profile=prof, progress=False,
                      stop_f1=None)
    assert len(res) == len(calls) == 4 and set(res["init"]) == {"random", "byol"}
    mtime = StudyPaths(tmp_path).results.stat().st_mtime_ns
    res2 = ft.run_grid(tmp_path, ["covid"], fractions=[1.0, 0.5], seeds=[0], profile=prof, progress=False)
    assert len(calls) == 4 and len(res2) == 4 and StudyPaths(tmp_path).results.stat().st_mtime_ns == mtime
    # the paper's rule: all methods below the limit at 100 % -> no smaller fraction for brain
    res3 = ft.run_grid(tmp_path, ["brain"], fractions=[1.0, 0.5], seeds=[0], profile=prof, progress=False,
                       stop_f1=1.01)
    assert sorted(res3.loc[res3["task"] == "brain", "fraction"]) == [1.0, 1.0]


def test_select_pretrain_epoch_on_validation_f1(study, monkeypatch):
    prof = ft.get_profile(PROFILE, linear_epochs=1, full_epochs=0)
    n_rows = len(ft.read_results(study))
    best = ft.select_pretrain_epoch(study, "covid", "spark", prof)
    sel = pd.read_csv(StudyPaths(study).finetune / "epoch_selection.csv")
    assert sorted(sel["pretrain_epoch"]) == [1, 2] and sel["chosen"].sum() == 1
    assert best == sel.loc[sel["val_f1"].idxmax(), "pretrain_epoch"]
    assert len(ft.read_results(study)) == n_rows  # selection runs are not results rows
    monkeypatch.setattr(ft, "finetune_run", lambda *a, **k: pytest.fail("cached selection must not retrain"))
    assert ft.select_pretrain_epoch(study, "covid", "spark", prof) == best


def test_released_checkpoint_name_in_results(tmp_path):
    bb = build_backbone("resnet18")
    path = tmp_path / "byol.ckpt"
    torch.save({"state_dict": {"online_network.encoder." + k: v for k, v in bb.state_dict().items()}}, path)
    assert ft.init_name(path, tmp_path, "resnet18") == "byol-released"
    assert ft.init_name("spark", tmp_path, "resnet18") == "spark"


def test_linear_lr_is_the_heads_rate_in_the_linear_phase():
    x, y = _tensors()
    heads = {}
    for linear_lr in (0.0, None):
        torch.manual_seed(0)
        model = Classifier("resnet18", 2)
        before = model.head.weight.clone()
        ft.fit(model, x, y, x[:8], y[:8], ft.get_profile(PROFILE, linear_epochs=2, full_epochs=0, linear_lr=linear_lr),
               mean=0.5, std=0.25)
        heads[linear_lr] = torch.equal(before, model.head.weight)
    assert heads == {0.0: True, None: False}  # lr 0 leaves the head; None trains it at ``lr``


def test_frozen_features_are_cached_per_backbone_and_equal_fresh_ones(study, monkeypatch):
    data = ft.load_task_data(study, "covid", 32)
    prof = ft.get_profile(PROFILE, linear_epochs=2, full_epochs=1)
    split = ft.task_splits(data.store, "covid")
    cache = ft.FeatureCache()
    torch.manual_seed(0)
    model = Classifier("resnet18", 2)
    calls = []
    real = ft._features
    monkeypatch.setattr(ft, "_features", lambda bb, images, *a, **k: calls.append(len(images)) or real(bb, images, *a, **k))
    half = split.train[: len(split.train) // 2]
    first = ft.frozen_features(model.backbone, data, prof, half, split.val, cache=cache)
    full = ft.frozen_features(model.backbone, data, prof, split.train, split.val, cache=cache)
    # plain rows of train+val once, then only the missing train rows; mirrors as needed
    assert calls == [len(half) + len(split.val), len(half), len(split.train) - len(half), len(split.train) - len(half)]
    again = ft.frozen_features(model.backbone, data, prof, split.train, split.val, cache=cache)
    assert len(calls) == 4  # all cached
    t = torch.from_numpy
    fresh = real(model.backbone, data.images[t(split.train)], data.mean, data.std, 64, torch.device("cpu"), False)
    flipped = real(model.backbone, data.images[t(split.train)], data.mean, data.std, 64, torch.device("cpu"), False,
                   flip=True)
    assert torch.allclose(again.train, fresh, atol=1e-5) and torch.allclose(again.train_flipped, flipped, atol=1e-5)
    assert torch.allclose(first.train, full.train[: len(half)]) and torch.equal(first.val, full.val)
    other = Classifier("resnet18", 2)  # other weights: other features, not the cached ones
    assert not torch.allclose(ft.frozen_features(other.backbone, data, prof, split.train, split.val, cache=cache).train,
                              full.train)
    with pytest.raises(ValueError, match="do not match"):
        ft.fit(model, data.images[t(split.train)], data.labels[t(split.train)], data.images[t(split.val)],
               data.labels[t(split.val)], prof, mean=data.mean, std=data.std, frozen=first)


def test_cached_features_give_the_same_run(study):
    prof = ft.get_profile(PROFILE, linear_epochs=3, full_epochs=1)
    cache = ft.FeatureCache()
    cold = ft.finetune_run(study, "covid", "spark", fraction=0.5, profile=prof, save=False, features=cache)
    warm = ft.finetune_run(study, "covid", "spark", fraction=0.5, profile=prof, save=False, features=cache)
    assert len(cache) == 1
    np.testing.assert_allclose(cold["_probs"], warm["_probs"], atol=1e-5)
    assert cold["best_epoch"] == warm["best_epoch"]


@pytest.mark.slow
def test_grid_on_worker_processes_matches_serial(tmp_path):
    import shutil

    make_stores(tmp_path / "a")
    export_encoders(tmp_path / "a", "byol", [3])
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same stores (their patient keys are salted per store)
    prof = ft.get_profile(PROFILE, linear_epochs=2, full_epochs=1)
    kw = dict(tasks=["covid", "brain"], fractions=[1.0, 0.5], seeds=[0, 1], profile=prof, progress=False, stop_f1=None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count (1 each here), so the arithmetic is the same
    try:
        serial = ft.run_grid(tmp_path / "a", workers=1, **kw)
        parallel = ft.run_grid(tmp_path / "b", workers=2, **kw)
    finally:
        torch.set_num_threads(threads)
    assert len(serial) == len(parallel) == 16
    key = ft.RUN_KEY
    a = serial.sort_values(key).reset_index(drop=True)
    b = parallel.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key], b[key])
    for col in ("accuracy", "auc", "f1", "train_size", "best_epoch"):
        np.testing.assert_allclose(a[col].astype(float), b[col].astype(float), atol=1e-6, err_msg=col)
    for out in ("a", "b"):  # only the models Grad-CAM reads: the first seed at the largest fraction
        models = sorted(p.relative_to(StudyPaths(tmp_path / out).finetune / "models").as_posix()
                        for p in (StudyPaths(tmp_path / out).finetune / "models").rglob("*.pt"))
        assert models == ["brain/byol/f1.0_s0_k0.pt", "brain/random/f1.0_s0_k0.pt", "covid/byol/f1.0_s0.pt",
                          "covid/random/f1.0_s0.pt"]
        assert ft.run_file(tmp_path / out, "predictions", "brain", "byol", 0.5, 1, 1).is_file()
    keep_all = ft.run_grid(tmp_path / "c", ["covid"], ["random"], [0.5], [1], ft.get_profile(prof, keep_models="all"),
                           progress=False) if make_stores(tmp_path / "c") is None else None
    assert len(keep_all) == 1 and ft.run_file(tmp_path / "c", "models", "covid", "random", 0.5, 1).is_file()
    again = ft.run_grid(tmp_path / "b", workers=2, **kw)  # resumable: nothing left to run
    assert len(again) == 16
    with pytest.raises(ValueError, match="workers"):
        ft.run_grid(tmp_path / "b", workers=0, **kw)


def test_worker_errors_reach_the_caller(tmp_path):
    make_stores(tmp_path)
    prof = ft.get_profile(PROFILE, linear_epochs=1, full_epochs=0)
    export_encoders(tmp_path, "byol", [3], arch="resnet34")  # wrong architecture for the profile's resnet18
    with pytest.raises(ft.InitError):
        ft.run_grid(tmp_path, ["covid", "brain"], ["byol"], [1.0], [0], prof, workers=2, progress=False, stop_f1=None)


def test_auto_workers_one_on_cuda_one_per_thread_on_cpu(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert ft.resolve_workers("auto", "cpu") == 2 and ft.resolve_workers("auto", "cuda") == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert ft.resolve_workers("auto", "cpu") == 4 and ft.resolve_workers(3, "cpu") == 3


def _brightened(records, sources, delta=60):
    for r in records:
        if r.source in sources:
            r.pixels = np.clip(r.pixels.astype(int) + delta, 0, 255).astype(np.uint8)
        yield r


@pytest.mark.slow
@pytest.mark.parametrize("task", ["covid", "brain"])
def test_changing_only_test_images_leaves_training_bit_identical(tmp_path, task):
    """No test slice enters a fitted quantity: normalisation, weights, curves, chosen epoch."""
    rows, test_sources = {}, set()
    for variant in ("plain", "bright"):
        out = tmp_path / variant
        records = _brightened(_records(24 if task == "covid" else 30, 2, task == "covid"), test_sources)
        write_store(records, StudyPaths(out).store(task), size=32, name=task, task="binary",
                    class_names=["NonCOVID", "COVID"] if task == "covid" else ["no hemorrhage", "hemorrhage"])
        export_encoders(out, "spark", [1])
        rows[variant] = ft.finetune_run(out, task, "spark", seed=0, profile=ft.get_profile(PROFILE, full_epochs=2),
                                        save=True)
        store = ft.load_task_data(out, task).store  # the slices this run (seed 0; brain: fold 0) tests on
        sources = set(store.manifest["source"].to_numpy()[ft.task_splits(store, task, seed=0).test])
        if variant == "plain":
            test_sources = sources
        else:  # the folds do not depend on the store build: the same slices are tested
            assert sources == test_sources and len(sources) > 0
    a, b = rows["plain"], rows["bright"]
    ca, cb = (r["_fit"].curves.drop(columns="time_s") for r in (a, b))
    pd.testing.assert_frame_equal(ca, cb, check_exact=True)  # every loss and validation metric, bit for bit
    assert a["best_epoch"] == b["best_epoch"]
    sa, sb = a["_fit"].model.state_dict(), b["_fit"].model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    _, ia = load_classifier(ft.run_file(tmp_path / "plain", "models", task, "spark", 1.0, 0, a["fold"]))
    _, ib = load_classifier(ft.run_file(tmp_path / "bright", "models", task, "spark", 1.0, 0, b["fold"]))
    assert (ia["mean"], ia["std"]) == (ib["mean"], ib["std"])
    assert not np.array_equal(a["_probs"], b["_probs"])  # the test images did change


def test_pixel_stats_are_exact():
    x = torch.randint(0, 256, (5, 1, 9, 9), dtype=torch.uint8)
    mean, std = ft.pixel_stats(x)
    ref = x.double() / 255
    assert mean == pytest.approx(ref.mean().item(), abs=1e-12) and std == pytest.approx(ref.std(unbiased=False).item())
    with pytest.raises(ValueError, match="uint8"):
        ft.pixel_stats(np.zeros((2, 2), dtype=np.float32))


def test_cv_folds_do_not_depend_on_the_store_salt(tmp_path):
    from ssl_lib.tasks import cv_splits, get_task

    folds = []
    for salt in ("one", "two"):
        path = StudyPaths(tmp_path / salt).store("brain")
        write_store(_records(30, 2, False), path, size=32, name="brain", task="binary", salt=salt,
                    class_names=["no hemorrhage", "hemorrhage"])
        folds.append(cv_splits(ft.SliceStore(path), get_task("brain")))
    assert len(folds[0]) == len(folds[1]) > 1
    for a, b in zip(*folds):
        assert all(np.array_equal(x, y) for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)))


def test_grid_stop_rule_reads_the_profiles_metric(tmp_path, monkeypatch):
    make_stores(tmp_path)
    seen = []
    monkeypatch.setattr(ft, "stop_reducing", lambda *a, **k: seen.append(k["metric"]) or True)
    prof = ft.get_profile(PROFILE, linear_epochs=1, full_epochs=0, stop_f1=0.7, stop_metric="f1_seed")
    res = ft.run_grid(tmp_path, ["covid"], ["random"], fractions=[1.0, 0.5], seeds=[0], profile=prof, progress=False)
    assert seen == ["f1_seed"] and list(res["fraction"]) == [1.0]
