"""Tests for ssl_lib.explain: Grad-CAM maps, method correlation, localisation scores, figures."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ssl_lib import explain, explain_figures  # noqa: E402
from ssl_lib.data.store import SliceRecord, write_store  # noqa: E402
from ssl_lib.models.classifier import Classifier, save_classifier  # noqa: E402
from ssl_lib.paths import StudyPaths  # noqa: E402
from ssl_lib.profiles import STAGE_STRIDES, explain_profile, get_profile  # noqa: E402

SIZE = 64  # layer4 of a ResNet gives 2 x 2 at 64 px: the smallest size with a non-constant map


def _disk(size, cy, cx, r):
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(40, 90, size=(n, SIZE, SIZE), dtype=np.uint8)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        masks[i] = _disk(SIZE, rng.integers(16, 48), rng.integers(16, 48), rng.integers(4, 10))
        imgs[i][masks[i] > 0] = 220
    return imgs, masks


def _model(seed):
    torch.manual_seed(seed)
    return Classifier("resnet18", 2).eval()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A temp output folder with a tiny 'covid' store (masks) and a saved classifier per init."""
    out = tmp_path_factory.mktemp("study")
    paths = StudyPaths(out)
    imgs, masks = _images(12, seed=1)
    records = []
    for i in range(12):
        label = i % 2
        records.append(SliceRecord(pixels=imgs[i], patient=f"p{i}", label=label, split="test" if i < 8 else "train",
                                   source=f"s{i}", mask=masks[i] if label == 1 else None))
    store = write_store(records, paths.store("covid"), size=SIZE, name="covid", task="binary",
                        class_names=["NonCOVID", "COVID"])
    for k, init in enumerate(explain.INITS):
        save_classifier(_model(k), explain.model_path(out, "covid", init, 1.0, 0), task="covid", init=init,
                        fraction=1.0, seed=0, mean=store.mean, std=store.std, image_size=SIZE)
    return out


# ---------------------------------------------------------------------------------------------- correlation


def test_correlation_with_itself_is_one_and_with_negative_minus_one():
    a = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(explain.pearson_per_image(a, a), 1.0, atol=1e-9)
    np.testing.assert_allclose(explain.pearson_per_image(a, -a), -1.0, atol=1e-9)
    np.testing.assert_allclose(explain.pearson_per_image(a, 1 - a), -1.0, atol=1e-9)


def test_constant_maps_are_excluded_and_counted():
    a = np.random.default_rng(0).random((4, 8, 8))
    b = a.copy()
    b[1] = 0.0  # an all-zero Grad-CAM map
    r = explain.pearson_per_image(a, b)
    assert np.isnan(r[1]) and np.all(np.isfinite(r[[0, 2, 3]]))
    t = explain.correlation_table({"byol": a, "spark": b}, n_boot=100)
    row = t.iloc[0]
    assert (row["n"], row["n_constant"]) == (3, 1)
    assert row["mean_r"] == pytest.approx(1.0)
    # the page draws a matrix or bars only where some model has a score (all constant: nothing to draw)
    from ssl_lib.heatmap_stats import any_scored

    assert any_scored(t, "mean_r")
    flat = explain.correlation_table({"byol": np.zeros_like(a), "spark": b}, n_boot=20)
    assert not any_scored(flat, "mean_r") and not any_scored(flat.iloc[:0], "mean_r")
    loc = pd.DataFrame({"kind": ["model", "baseline"], "mean": [np.nan, 0.02]})
    assert not any_scored(loc) and any_scored(loc.assign(mean=[0.3, 0.02]))  # baselines alone do not count


def test_correlation_table_every_pair_with_interval():
    rng = np.random.default_rng(1)
    base = rng.random((30, 8, 8))
    maps = {"byol": base, "swav": base + 0.5 * rng.random(base.shape), "spark": rng.random(base.shape)}
    t = explain.correlation_table(maps, n_boot=200)
    assert list(t.columns) == ["init_a", "init_b", "mean_r", "ci_low", "ci_high", "n", "n_constant"]
    assert set(zip(t.init_a, t.init_b)) == {("byol", "swav"), ("byol", "spark"), ("swav", "spark")}
    assert (t.ci_low <= t.mean_r).all() and (t.mean_r <= t.ci_high).all() and (t.n == 30).all()
    r = t.set_index(["init_a", "init_b"])["mean_r"]
    assert r[("byol", "swav")] > 0.5 > abs(r[("byol", "spark")])
    mat = explain.correlation_matrix(t)
    assert mat.shape == (3, 3) and np.allclose(np.diag(mat), 1) and np.allclose(mat, mat.T)


# ---------------------------------------------------------------------------------------------- localisation


def test_energy_share_one_for_mask_and_chance_for_random():
    _, masks = _images(20)
    assert np.allclose(explain.energy_share(masks.astype(np.float32), masks), 1.0)
    area = masks.reshape(20, -1).mean(1)
    rand = explain.uniform_random_maps(masks.shape, seed=0)
    np.testing.assert_allclose(explain.energy_share(rand, masks), area, atol=0.02)
    assert np.isnan(explain.energy_share(np.zeros_like(rand[:1]), masks[:1]))[0]


def test_pointing_game_hits_for_mask_map_and_tolerance():
    _, masks = _images(6)
    assert np.all(explain.pointing_hits(masks.astype(np.float32), masks) == 1.0)
    mask = np.zeros((1, 16, 16), np.uint8)
    mask[0, 4:8, 4:8] = 1
    peak = np.zeros((1, 16, 16), np.float32)
    peak[0, 4, 10] = 1.0  # 3 px to the right of the mask
    assert explain.pointing_hits(peak, mask, tolerance=0)[0] == 0.0
    assert explain.pointing_hits(peak, mask, tolerance=3)[0] == 1.0
    assert np.isnan(explain.pointing_hits(np.zeros_like(peak), mask)[0])


def test_localisation_table_positive_images_and_baselines():
    imgs, masks = _images(40)
    labels = np.tile([1, 0], 20)
    masks[labels == 0] = 0
    masks[0] = 0  # a positive without a lesion outline: not scored
    maps = {"oracle": masks.astype(np.float32), "flat": np.zeros(masks.shape, np.float32)}
    t = explain.localisation_table(maps, masks, labels, n_boot=200, tolerance=0)
    assert set(t.method) == {"oracle", "flat", "uniform-random", "centre-gaussian"}
    g = t.set_index(["method", "metric"])
    assert g.loc[("oracle", "energy"), "mean"] == pytest.approx(1.0)
    assert g.loc[("oracle", "pointing"), "mean"] == pytest.approx(1.0)
    assert g.loc[("oracle", "energy"), "n"] == 19
    assert (g.loc[("flat", "energy"), "n"], g.loc[("flat", "energy"), "n_excluded"]) == (0, 19)
    chance = g.loc[("uniform-random", "energy"), "chance"]
    assert g.loc[("uniform-random", "energy"), "mean"] == pytest.approx(chance, abs=0.01)
    assert (t[t.method == "uniform-random"].kind == "baseline").all()
    assert explain.localisation_table(maps, None, labels).empty


# ---------------------------------------------------------------------------------------------- Grad-CAM


def test_gradcam_maps_shape_range_deterministic_and_batched():
    imgs, _ = _images(5)
    model = _model(0)
    m1 = explain.gradcam_maps(model, imgs, mean=0.3, std=0.2, batch_size=2)
    m2 = explain.gradcam_maps(model, imgs, mean=0.3, std=0.2, batch_size=32)
    assert m1.shape == (5, SIZE, SIZE) and m1.dtype == np.float32
    assert np.isfinite(m1).all() and m1.min() >= 0 and m1.max() <= 1
    assert m1.max() > 0.5  # min-max scaled, not all zero
    np.testing.assert_array_equal(m1, explain.gradcam_maps(model, imgs, mean=0.3, std=0.2, batch_size=2))
    np.testing.assert_allclose(m1, m2, atol=1e-5)  # batching does not change a map
    model.train()
    explain.gradcam_maps(model, imgs[:2], mean=0.3, std=0.2)
    assert model.training and all(p.requires_grad for p in model.parameters())  # state restored


def test_gradcam_depends_on_model_and_target():
    imgs, _ = _images(3)
    a = explain.gradcam_maps(_model(0), imgs, mean=0.3, std=0.2)
    b = explain.gradcam_maps(_model(1), imgs, mean=0.3, std=0.2)
    assert not np.allclose(a, b, atol=1e-3)
    c = explain.gradcam_maps(_model(0), imgs, targets=0, mean=0.3, std=0.2)
    assert not np.allclose(a, c, atol=1e-3)


def test_gradcam_all_zero_cam_is_finite():
    imgs, _ = _images(2)
    model = _model(0)
    with torch.no_grad():
        model.head.weight.zero_()  # no gradient reaches layer4: the cam is all zero
    m = explain.gradcam_maps(model, imgs, mean=0.3, std=0.2)
    assert np.isfinite(m).all() and np.all(m == 0)
    tiny = explain.gradcam_maps(_model(0), imgs[:, :32, :32], mean=0.3, std=0.2)  # 1 x 1 at layer4
    assert tiny.shape == (2, 32, 32) and np.isfinite(tiny).all()


def test_gradcam_bad_input_is_one_clear_error():
    with pytest.raises(explain.ExplainError, match="mean"):
        explain.gradcam_maps(_model(0), np.zeros((1, SIZE, SIZE), np.uint8))
    with pytest.raises(explain.ExplainError, match="targets"):
        explain.gradcam_maps(_model(0), np.zeros((2, SIZE, SIZE), np.uint8), targets=[1], mean=0.3, std=0.2)


def test_gradcam_for_inits_and_cache(study, monkeypatch):
    heat = explain.gradcam_for_inits(study, "covid", 1.0, 0)
    assert heat.inits == list(explain.INITS) and len(heat) == 8
    assert heat.masks is not None and heat.images.dtype == np.uint8
    for m in heat.maps.values():
        assert m.shape == (8, SIZE, SIZE) and np.isfinite(m).all()
    assert np.all(heat.targets["byol"] == 1)  # binary task: the finding is explained
    cache = StudyPaths(study).gradcam / "covid_f1.0_s0.npz"
    assert cache.is_file()

    def boom(*a, **k):
        raise AssertionError("recomputed instead of using the cache")

    monkeypatch.setattr(explain, "_explain", boom)
    again = explain.gradcam_for_inits(study, "covid", 1.0, 0)
    for init in heat.inits:
        np.testing.assert_array_equal(again.maps[init], heat.maps[init])
    byol = explain.model_path(study, "covid", "byol", 1.0, 0)
    st = byol.stat()
    os.utime(byol, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a re-trained model: recompute
    with pytest.raises(AssertionError, match="recomputed"):
        explain.gradcam_for_inits(study, "covid", 1.0, 0)
    os.utime(byol, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.undo()
    sub = explain.gradcam_for_inits(study, "covid", 1.0, 0, indices=heat.indices[:3], inits=["byol", "spark"],
                                    use_cache=False)
    assert sub.inits == ["byol", "spark"]
    np.testing.assert_allclose(sub.maps["spark"], heat.maps["spark"][:3], atol=1e-5)
    with pytest.raises(explain.ExplainError, match="f0.5_s0.pt"):
        explain.gradcam_for_inits(study, "covid", 0.5, 0, inits=["byol"])


@pytest.mark.slow
def test_run_gradcam_writes_tables_and_figures(study, monkeypatch):
    res = explain.run_gradcam(study, "covid", 1.0, 0, profile="smoke")
    assert res.files["correlation"].is_file() and res.files["localisation"].is_file()
    assert len(res.correlation) == 10  # 5 inits -> 10 pairs
    assert set(res.localisation.method) == set(explain.INITS) | set(explain.BASELINES)
    lesion = res.localisation[res.localisation.region == "lesion"]
    assert (lesion.n <= 4).all()  # the 4 positive test images with a lesion
    # every method of the profile, scored like Grad-CAM; occlusion on the smoke profile's 4 positive images
    assert list(dict.fromkeys(res.localisation.explainer)) == list(explain_profile("smoke").explainers)
    assert res.heat.explainers == list(explain_profile("smoke").explainers) and res.heat.lungs is not None
    assert len(res.heat.positions_of("occlusion")) == 4 and (res.heat.labels[res.heat.positions_of("occlusion")] == 1).all()
    assert res.files["agreement"].is_file() and set(res.agreement.explainer) == {"gradcam", "gradcam++", "layercam",
                                                                                 "hirescam"}
    assert (res.agreement.n + res.agreement.n_constant == 4).all()
    pd.testing.assert_frame_equal(pd.read_csv(res.files["agreement"]), res.agreement, check_dtype=False)
    figs = [explain_figures.plot_examples(res.heat, 2), explain_figures.plot_correlation(res.correlation),
            explain_figures.plot_localisation(res.localisation), explain_figures.plot_explainers(res.heat),
            explain_figures.plot_agreement(res.agreement)]
    for fig in figs:
        assert isinstance(fig, Figure)
    # no empty figures: nothing to draw is no figure
    assert explain_figures.plot_localisation(res.localisation.iloc[:0]) is None
    assert explain_figures.plot_agreement(res.agreement.iloc[:0]) is None
    assert len(figs[3].axes) == 5 * 6  # five methods x (input + 5 models)
    assert len(figs[0].axes) == 4 * 6 + 1  # 2 positive + 2 negative rows, input + 5 methods; the colour bar
    assert figs[0].axes[-1].get_ylabel() == "heat (per map, scaled to [0, 1])"
    from ssl_lib.present import legibility_problems

    assert legibility_problems(figs[0]) == []  # no text under 8 pt, not wider than the text column
    plt.close("all")
    box = explain_figures.heatmap_browser(res.heat)
    assert box.children and len(box.children[0].children) == 3
    plt.close("all")
    monkeypatch.setenv("SSL_CT_BATCH", "1")  # the study runner's kernels: pre-rendered frames for the book
    page = explain_figures.heatmap_browser(res.heat, max_images=3).data
    assert "sslct-viewer" in page and page.count("<img data-key=") == 3 * len(res.heat.inits)
    assert page.count("<select") == 1 and page.count('type="range"') == 1  # method menu, image slider


def test_gradcam_for_a_cross_validated_task_uses_the_fold(tmp_path):
    from ssl_lib.tasks import task_splits

    imgs, masks = _images(20, seed=3)
    records = [SliceRecord(pixels=imgs[i], patient=f"p{i // 2}", label=(i // 2) % 2, source=f"s{i}")
               for i in range(20)]
    store = write_store(records, StudyPaths(tmp_path).store("brain"), size=SIZE, name="brain", task="binary",
                        class_names=["no hemorrhage", "hemorrhage"])
    save_classifier(_model(0), explain.model_path(tmp_path, "brain", "spark", 1.0, 0, fold=0), mean=store.mean,
                    std=store.std)
    with pytest.raises(explain.ExplainError, match="fold"):
        explain.gradcam_for_inits(tmp_path, "brain", 1.0, 0)
    heat = explain.gradcam_for_inits(tmp_path, "brain", 1.0, 0, fold=0)
    np.testing.assert_array_equal(heat.indices, np.sort(task_splits(store, "brain", 0, fold=0).test))
    assert heat.inits == ["spark"] and heat.masks is None
    assert explain.cache_path(tmp_path, "brain", 1.0, 0, fold=0).name == "brain_f1.0_s0_k0.npz"
    assert explain.localisation_table(heat).empty


def test_grad_cam_with_resolution_enlarged_input_and_earlier_stage(study, tmp_path):
    """The quick profile's setting: 64 px slices enlarged to 128 px, Grad-CAM on layer2 (16 x 16)."""
    coarse = explain.gradcam_for_inits(study, "covid", 1.0, 0, inits=["spark"], use_cache=False)
    fine = explain.gradcam_for_inits(study, "covid", 1.0, 0, inits=["spark"], use_cache=False, input_size=128,
                                     stage="layer2")
    assert fine.images.shape == fine.masks.shape == (8, 128, 128) and fine.maps["spark"].shape == (8, 128, 128)
    # masks enlarged by nearest neighbour: still binary, same area share
    assert set(np.unique(fine.masks)) <= set(np.unique(coarse.masks))
    assert abs((fine.masks > 0).mean() - (coarse.masks > 0).mean()) < 0.01
    # a 16 x 16 grid (upsampled) carries more distinct values per map than the 2 x 2 one
    distinct = lambda m: np.mean([len(np.unique(np.round(x, 4))) for x in m])  # noqa: E731
    assert distinct(fine.maps["spark"]) > distinct(coarse.maps["spark"])
    # the enlargement's effect on the model's output is reported: at the fine-tuned size the
    # numbers are those of Grad-CAM on the stored images (same model, same explained class)
    at_size, native = fine.summary().iloc[0], coarse.summary().iloc[0]
    assert at_size[f"prob_target_{SIZE}px"] == pytest.approx(native["mean_prob_target"], abs=1e-5)
    assert at_size[f"accuracy_{SIZE}px"] == pytest.approx(native["accuracy"])
    assert f"accuracy_{SIZE}px" not in coarse.summary().columns
    again = explain.HeatMaps.load(fine.save(tmp_path / "fine.npz"))
    pd.testing.assert_frame_equal(again.summary(), fine.summary())
    # a cache written before the size was recorded is not reused: its summary could not name it
    cached = explain.gradcam_for_inits(study, "covid", 1.0, 0, inits=["spark"], input_size=128, stage="layer2")
    del cached.meta["fine_tuned_size"]
    cached.save(explain.cache_path(study, "covid", 1.0, 0))
    redone = explain.gradcam_for_inits(study, "covid", 1.0, 0, inits=["spark"], input_size=128, stage="layer2")
    assert redone.meta["fine_tuned_size"] == SIZE and f"accuracy_{SIZE}px" in redone.summary().columns
    # the quick profile explains its models at the size they were fine-tuned at, on a 16 x 16 grid
    quick, fit_size = explain_profile("quick"), get_profile("quick").finetune.image_size
    assert quick.input_size in (None, fit_size) and fit_size // STAGE_STRIDES[quick.stage] == 16
    with pytest.raises(explain.ExplainError, match="stage"):
        explain.gradcam_for_inits(study, "covid", 1.0, 0, stage="layer5", use_cache=False)


def test_dropped_maps_counts_constant_maps_and_says_why():
    heat = explain.HeatMaps(images=np.zeros((3, 4, 4), np.uint8), labels=np.array([1, 0, 1]), masks=None,
                            maps={"byol": np.stack([np.zeros((4, 4)), np.eye(4), np.ones((4, 4))]).astype(np.float32)},
                            indices=np.arange(3), other={"occlusion": {"byol": np.zeros((1, 4, 4), np.float32)}},
                            positions={"occlusion": np.array([2])})
    d = explain.dropped_maps(heat)
    assert d.loc[0, "constant"] == 2 and d.loc[0, "share"] == pytest.approx(2 / 3) and "constant" in d.loc[0, "reason"]
    assert list(d.explainer) == ["Grad-CAM", "occlusion"] and d.loc[1, "n"] == 1 and d.loc[1, "constant"] == 1
    assert "no square lowered" in d.loc[1, "reason"]


# ---------------------------------------------------------------------------------------------- more methods


def test_every_explainer_cached_with_its_settings(study, monkeypatch):
    occ = explain.Occlusion(size=16, stride=16, fill=0, max_images=3)
    kw = dict(inits=["random", "spark"], explainers=["gradcam", "layercam", "occlusion"], occlusion=occ, lung=True)
    heat = explain.gradcam_for_inits(study, "covid", 1.0, 0, **kw)
    assert heat.explainers == ["gradcam", "layercam", "occlusion"]
    pos = heat.positions_of("occlusion")
    assert len(pos) == 3 and (heat.labels[pos] == 1).all() and np.all(np.diff(pos) > 0)  # 3 of the 4 positives
    assert heat.maps_of("layercam")["spark"].shape == (8, SIZE, SIZE)
    assert heat.maps_of("occlusion")["spark"].shape == (3, SIZE, SIZE)
    assert heat.lungs.shape == (8, SIZE, SIZE) and heat.lungs.dtype == bool
    assert heat.meta["occlusion"] == occ.as_meta() and heat.meta["n_available"] == 8
    with pytest.raises(explain.ExplainError, match="no 'hirescam' maps"):
        heat.maps_of("hirescam")

    def boom(*a, **k):
        raise AssertionError("recomputed instead of using the cache")

    monkeypatch.setattr(explain, "_explain", boom)
    again = explain.gradcam_for_inits(study, "covid", 1.0, 0, **kw)  # from the cache, every method
    assert again.explainers == heat.explainers and np.array_equal(again.positions_of("occlusion"), pos)
    for e in heat.explainers:
        for init in heat.inits:
            np.testing.assert_array_equal(again.maps_of(e)[init], heat.maps_of(e)[init])
    np.testing.assert_array_equal(again.lungs, heat.lungs)
    for changed in (dict(kw, occlusion=explain.Occlusion(16, 8, 0, 3)), dict(kw, explainers=["gradcam"]),
                    dict(kw, lung=False)):
        with pytest.raises(AssertionError, match="recomputed"):  # other settings: not this cache
            explain.gradcam_for_inits(study, "covid", 1.0, 0, **changed)
    old = explain.HeatMaps.load(explain.cache_path(study, "covid", 1.0, 0))
    for key in ("explainers", "occlusion", "lung_mask"):  # a cache of the Grad-CAM-only format
        del old.meta[key]
    old.other, old.positions, old.lungs = {}, {}, None
    old.save(explain.cache_path(study, "covid", 1.0, 0))
    with pytest.raises(AssertionError, match="recomputed"):
        explain.gradcam_for_inits(study, "covid", 1.0, 0, inits=["random", "spark"])
    monkeypatch.undo()
    with pytest.raises(explain.ExplainError, match="occlusion=Occlusion"):
        explain.gradcam_for_inits(study, "covid", 1.0, 0, explainers=["occlusion"], use_cache=False)
    with pytest.raises(explain.ExplainError, match="unknown explanation method"):
        explain.gradcam_for_inits(study, "covid", 1.0, 0, explainers=["smoothgrad"], use_cache=False)


def test_occlusion_subset_positive_images_capped_and_seeded():
    labels = np.array([0, 1, 1, 0, 1, 1, 1])
    occ = explain.Occlusion(8, 8, max_images=3)
    a = explain.occlusion_subset(labels, "binary", occ, seed=0)
    assert len(a) == 3 and (labels[a] == 1).all() and np.array_equal(a, explain.occlusion_subset(labels, "binary", occ))
    assert np.array_equal(explain.occlusion_subset(labels, "binary", explain.Occlusion(8, 8)), [1, 2, 4, 5, 6])
    assert len(explain.occlusion_subset(labels, "multiclass", explain.Occlusion(8, 8))) == 7  # no finding: all
    assert len(explain.occlusion_subset(labels, "binary", explain.Occlusion(8, 8, on="all"))) == 7
    with pytest.raises(explain.ExplainError, match="positive"):
        explain.occlusion_subset(labels, "binary", explain.Occlusion(8, 8, on="some"))


def _hand_made_heat():
    """6 images (4 positive with a lesion in the top-left 4 x 4), lungs = the left half; an oracle
    model whose maps are the lesion (and faint noise in the lung), one whose maps are the right
    half; occlusion on 3 positives."""
    n, s = 6, 16
    labels = np.array([1, 1, 1, 1, 0, 0])
    masks = np.zeros((n, s, s), np.uint8)
    masks[:4, :4, :4] = 1
    lungs = np.zeros((n, s, s), bool)
    lungs[:, :, :8] = True
    right = np.zeros((n, s, s), np.float32)
    right[:, :, 8:] = np.random.default_rng(0).random((n, s, 8))
    oracle = masks + 0.01 * np.random.default_rng(1).random((n, s, s)).astype(np.float32) * lungs  # all in the lung
    pos = np.array([0, 2, 3])
    return explain.HeatMaps(images=np.zeros((n, s, s), np.uint8), labels=labels, masks=masks,
                            maps={"oracle": oracle, "right": right}, indices=np.arange(n),
                            other={"occlusion": {"oracle": oracle[pos], "right": oracle[pos]}},
                            positions={"occlusion": pos}, lungs=lungs)


def test_explanation_table_scores_every_method_in_lesion_and_lung():
    t = explain.explanation_table(_hand_made_heat(), n_boot=100)
    assert list(t.columns) == explain.SCORE_COLUMNS
    g = t.set_index(["explainer", "region", "metric", "method"])
    assert g.loc[("gradcam", "lesion", "energy", "oracle"), "mean"] > 0.9
    assert g.loc[("gradcam", "lesion", "energy", "oracle"), "n"] == 4  # the positives with a lesion
    assert g.loc[("gradcam", "lesion", "energy", "right"), "mean"] == 0
    assert g.loc[("gradcam", "lung", "energy", "right"), "mean"] == 0  # all its energy is outside the lung
    assert g.loc[("gradcam", "lung", "pointing", "oracle"), "mean"] == 1
    assert g.loc[("gradcam", "lung", "energy", "oracle"), "n"] == 6  # every image, both classes
    assert g.loc[("gradcam", "lung", "energy", "uniform-random"), "chance"] == pytest.approx(0.5)
    assert g.loc[("occlusion", "lesion", "energy", "right"), "n"] == 3  # occlusion's own images ...
    assert g.loc[("occlusion", "lesion", "energy", "uniform-random"), "n"] == 3  # ... and its own baselines
    assert set(t[t.kind == "baseline"].method) == set(explain.BASELINES)
    heat = _hand_made_heat()
    heat.masks, heat.lungs = None, None
    empty = explain.explanation_table(heat)
    assert empty.empty and list(empty.columns) == explain.SCORE_COLUMNS


def test_agreement_table_compares_each_gradient_map_with_occlusion_on_its_images():
    heat = _hand_made_heat()
    a = explain.agreement_table(heat, n_boot=100)
    assert list(a.columns) == explain.AGREEMENT_COLUMNS
    r = a.set_index(["explainer", "method"])["mean_r"]
    assert r[("gradcam", "oracle")] == pytest.approx(1.0)  # the same maps on the same images (positions matched)
    assert r[("gradcam", "right")] < 0.1
    assert (a.n == 3).all() and (a.reference == "occlusion").all()
    heat.other = {}
    assert explain.agreement_table(heat).empty


def test_profiles_know_the_explainer_settings():
    from ssl_lib.profiles import ProfileError

    for name in ("smoke", "quick", "paper"):
        ex = get_profile(name).explain
        assert ex.explainers[0] == "gradcam" and "occlusion" in ex.explainers
        assert 1 <= ex.occlusion_stride <= ex.occlusion_size
    assert explain_profile("quick").occlusion_max_images is not None  # occlusion is capped where time is short
    with pytest.raises(ProfileError, match="occlusion_stride"):
        get_profile("quick", explain={"occlusion_stride": 16})
    with pytest.raises(ProfileError, match="occlusion_size 128 px does not fit"):
        get_profile("quick", explain={"occlusion_size": 128, "occlusion_stride": 8})
    with pytest.raises(ProfileError, match="not registered"):
        get_profile("quick", explain={"explainers": ("gradcam", "smoothgrad")})
    with pytest.raises(ProfileError, match="must include 'gradcam'"):
        get_profile("quick", explain={"explainers": ("layercam",)})
    with pytest.raises(ProfileError, match="occlusion_fill"):
        get_profile("quick", explain={"occlusion_fill": 300})


def test_the_lung_is_scored_on_chest_tasks_by_default():
    assert explain.lung_task("covid") and not explain.lung_task("brain") and not explain.lung_task("organs")
    assert not explain.lung_task("no_such_task")
