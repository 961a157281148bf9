"""Pre-training (ssl_lib.pretrain): loss falls, export, resume, cards, profiles, previews."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from ssl_lib.data.store import SliceRecord, SliceStore, write_store
from ssl_lib.pretrain import (METHODS, PROFILES, PretrainError, get_config, load_encoder, load_module, param_table,
                              plot_views, pretrain, preview, view_browser)

pytestmark = pytest.mark.slow  # studies, training runs or subprocesses: minutes (make test-fast skips)

EPOCHS = 5


def structured_records(n: int, size: int, seed: int = 0):
    """Body-like ellipse with 1-3 bright discs and noise: CT-ish slices with structure to learn."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    for i in range(n):
        img = np.full((size, size), 20.0)
        img[((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.35) ** 2 < 1] = 110
        for _ in range(rng.integers(1, 4)):
            cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.04, 0.15)
            img[((xx - cx) ** 2 + (yy - cy) ** 2) < r * r] = rng.uniform(160, 250)
        img += rng.normal(0, 8, img.shape)
        yield SliceRecord(np.clip(img, 0, 255).astype(np.uint8), patient=f"p{i // 8}", source=f"s{i}")


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> SliceStore:
    return write_store(structured_records(64, 32), tmp_path_factory.mktemp("st") / "lidc", size=32, name="lidc")


@pytest.fixture(scope="session")
def runs(store, tmp_path_factory):
    """One smoke run per method, EPOCHS epochs of 8 steps, checkpoints every 3 epochs."""
    root = tmp_path_factory.mktemp("runs")
    return {m: pretrain(m, store, root / m, profile="smoke", epochs=EPOCHS, every_n_epochs=3, progress=False)
            for m in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_loss_falls(runs, method):
    loss = runs[method].steps["loss"].to_numpy()
    assert len(loss) == EPOCHS * 8 and np.isfinite(loss).all()
    # MoCo: the first steps compare against a random (easy) queue, so start once it holds real keys
    start = 8 if method == "mocov2" else 0
    first, last = loss[start:start + 8].mean(), loss[-8:].mean()
    assert last < first, (method, first, last)


@pytest.mark.parametrize("method", METHODS)
def test_outputs_checkpoints_and_cards(runs, store, method):
    r = runs[method]
    assert [p.name for p in r.encoders] == ["epoch_0003.pt", "epoch_0005.pt"]  # every 3 and at the end
    # only what resume reads: later steps read the exported encoders, not per-epoch checkpoints
    assert sorted(p.name for p in r.checkpoints.glob("*.ckpt")) == ["last.ckpt"]
    assert not list(r.run_dir.rglob(".*tmp-*"))  # no temporary files left behind
    card = json.loads(r.encoders[-1].with_suffix(".json").read_text())
    assert card == {**card, "method": method, "epoch": EPOCHS, "arch": "resnet18", "channels": 3, "store": "lidc",
                    "profile": "smoke", "image_size": PROFILES["smoke"][method].crop_size}
    assert card["mean"] == pytest.approx(store.mean) and card["std"] == pytest.approx(store.std)
    assert list(r.metrics.columns) == ["epoch", "step", "loss", "lr", "images_per_s", "seconds"]
    assert r.metrics["epoch"].tolist() == list(range(1, EPOCHS + 1)) and r.metrics["step"].iloc[-1] == EPOCHS * 8
    assert r.epochs_done == EPOCHS and r.global_step == EPOCHS * 8 and r.trainable_params > 11e6
    size = json.loads((r.run_dir / "size.json").read_text())  # the run's cost for the book's Table 1
    assert size["trainable_params"] == r.trainable_params and size["epochs"] == EPOCHS and size["method"] == method
    assert size["train_seconds"] == pytest.approx(r.metrics["seconds"].sum(), abs=0.1) and size["peak_memory_gb"] > 0
    assert size["memory"] == "process RSS" and size["device"] == "1 x CPU"


@pytest.mark.parametrize("method", METHODS)
def test_exported_encoder_loads_into_torchvision(runs, method):
    r = runs[method]
    state = torch.load(r.encoder, weights_only=True)
    assert not any(k.startswith("fc.") for k in state)
    tv = torchvision.models.resnet18()
    del tv.fc
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(state, strict=True)
    trained = load_module(r.run_dir).encoder
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(tv.eval()(x), trained.eval()(x))
    net, card = load_encoder(r.encoder)
    torch.testing.assert_close(net.eval()(x), tv(x))
    assert card["epoch"] == EPOCHS


@pytest.mark.parametrize("method", ["mocov2", "swav"])
def test_resume_after_kill_equals_uninterrupted(store, tmp_path, method):
    full = pretrain(method, store, tmp_path / "full", profile="smoke", epochs=2, progress=False)
    # "killed" right after the epoch-1 checkpoint: max_steps stops without changing the schedule
    part = pretrain(method, store, tmp_path / "part", profile="smoke", epochs=2, max_steps=8, progress=False)
    assert part.global_step == 8 and (tmp_path / "part/checkpoints/last.ckpt").exists()
    resumed = pretrain(method, store, tmp_path / "part", profile="smoke", epochs=2, progress=False)
    assert resumed.global_step == full.global_step == 16 and resumed.epochs_done == full.epochs_done == 2
    a = torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "part/checkpoints/last.ckpt", weights_only=False)
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:  # weights, momentum encoders, MoCo queue, BN statistics
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], msg=k)
    oa, ob = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert oa.keys() == ob.keys()
    for k in oa:
        for name in oa[k]:
            torch.testing.assert_close(oa[k][name], ob[k][name])
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 16
    torch.testing.assert_close(full.steps["loss"].to_numpy(), resumed.steps["loss"].to_numpy())
    assert resumed.metrics["epoch"].tolist() == [1, 2]


def test_keep_all_checkpoints_keeps_every_epoch(store, tmp_path):
    r = pretrain("mocov2", store, tmp_path / "all", profile="smoke", epochs=2, every_n_epochs=1,
                 keep_checkpoints="all", progress=False)
    assert sorted(p.name for p in r.checkpoints.glob("*.ckpt")) == ["epoch_0001.ckpt", "epoch_0002.ckpt", "last.ckpt"]
    with pytest.raises(PretrainError, match="keep_checkpoints"):
        pretrain("mocov2", store, tmp_path / "bad", profile="smoke", epochs=1, keep_checkpoints="some", progress=False)
    assert not (tmp_path / "bad").exists()


def test_a_config_built_directly_checks_keep_checkpoints():
    from ssl_lib.pretrain import PretrainConfig
    from ssl_lib.pretrain.mocov2 import MoCoConfig

    with pytest.raises(PretrainError, match="keep_checkpoints"):
        MoCoConfig(keep_checkpoints="some")
    with pytest.raises(PretrainError, match="keep_checkpoints"):
        PretrainConfig.from_dict({"keep_checkpoints": "every"})
    assert MoCoConfig(keep_checkpoints="all").keep_checkpoints == "all"


def test_moco_queue_is_checkpointed(runs):
    state = torch.load(runs["mocov2"].checkpoints / "last.ckpt", weights_only=False)["state_dict"]
    assert state["queue"].shape == (16, 64) and "queue_ptr" in state


def test_existing_run_without_resume_is_an_error(runs, store):
    with pytest.raises(PretrainError, match="resume=True"):
        pretrain("byol", store, runs["byol"].run_dir, profile="smoke", resume=False, progress=False)


def test_bad_inputs_are_clear_errors(store, tmp_path):
    with pytest.raises(PretrainError, match="unknown pre-training method"):
        get_config("simclr")
    with pytest.raises(PretrainError, match="unknown profile"):
        get_config("byol", "huge")
    with pytest.raises(PretrainError, match="fewer than one batch"):
        pretrain("byol", store, tmp_path / "x", profile="smoke", batch_size=128, progress=False)
    with pytest.raises(PretrainError, match="queue"):
        pretrain("mocov2", store, tmp_path / "y", profile="smoke", queue_size=64, progress=False)


def test_profiles_cover_every_method_and_paper_matches_tables():
    assert set(PROFILES) == {"smoke", "quick", "paper"}
    for profile in PROFILES.values():
        assert set(profile) == set(METHODS)
    p = PROFILES["paper"]
    assert (p["byol"].lr, p["byol"].weight_decay, p["byol"].batch_size, p["byol"].crop_size) == (1e-3, 1.5e-6, 64, 224)
    assert (p["mocov2"].lr, p["mocov2"].momentum, p["mocov2"].batch_size, p["mocov2"].queue_size) == (1e-4, 0.9, 64, 65536)
    assert (p["swav"].lr, p["swav"].n_prototypes, p["swav"].frozen_prototype_steps, p["swav"].n_small,
            p["swav"].small_size, p["swav"].small_scale, p["swav"].crop_scale) == (0.15, 500, 313, 6, 96, (0.1, 0.33), (0.9, 1.0))
    assert (p["spark"].lr, p["spark"].batch_size, p["spark"].crop_size, p["spark"].mask_ratio) == (2.5e-5, 32, 512, 0.6)
    assert all(c.arch == "resnet50" and c.epochs == 900 and c.every_n_epochs == 50 for c in p.values())


def test_param_table_paper_sizes():
    table = param_table("paper")
    assert list(table.index) == list(METHODS)
    assert (table["encoder"] == 23.51).all()
    assert table.loc["byol", "trainable"] == pytest.approx(35.0, abs=0.1)  # online net incl. predictor
    assert table.loc["byol", "trainable"] + table.loc["byol", "momentum"] == pytest.approx(68.0, abs=0.1)
    assert table.loc["mocov2", "momentum"] == pytest.approx(table.loc["mocov2", "trainable"], abs=0.01)
    assert table.loc["swav", "momentum"] == 0 and table.loc["spark", "momentum"] == 0


def test_previews(store, runs, monkeypatch):
    images = store.read([0, 1, 2])
    views = preview("swav", images, profile="smoke")
    assert list(views) == ["original"] + [f"view {i}" for i in range(1, 5)]
    assert views["view 1"].shape == (3, 1, 48, 48) and views["view 3"].shape == (3, 1, 40, 40)
    assert all(0 <= v.min() and v.max() <= 1 for v in views.values())
    spark = preview(runs["spark"].module, images)
    assert {"crop", "masked input", "reconstruction"} <= set(spark)
    assert spark["reconstruction"].shape == (3, 1, 64, 64)
    masked_share = (spark["masked input"] == 0).float().mean()
    assert 0.4 < masked_share < 0.9  # 60 % of the patches are blacked out
    fig = plot_views(spark)
    assert len(fig.axes) == 3 * 4
    assert view_browser(views).children  # a slider widget
    monkeypatch.setenv("SSL_CT_BATCH", "1")  # the study runner's kernels: pre-rendered frames for the book
    page = view_browser(views).data
    assert "sslct-viewer" in page and page.count("<img data-key=") == len(images)


def test_run_size_sits_beside_the_papers_table1_without_raw_dtypes():
    from types import SimpleNamespace

    from ssl_lib import pretrain as pt

    run_size = pt.run_size  # as the pre-training pages call it

    result = SimpleNamespace(trainable_params=11_357_888, peak_memory_mb=1155.06, wall_time_s=15.7, epochs_done=2,
                             global_step=8)
    table = run_size(result, "byol")
    assert list(table.columns) == ["this run", "paper (Table 1)"]
    assert table.loc["trainable parameters (M)"].tolist() == ["11.4", "70.1"]
    assert table.loc["peak memory (GB)", "paper (Table 1)"] == "14.4"
    assert table.loc["steps", "paper (Table 1)"] == "—"
    assert "dtype" not in table.to_string()
