"""Tests for ssl_lib.explain_text: the Grad-CAM chapter's sentences, from hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ssl_lib import explain_text as T
from ssl_lib.heatmap_stats import AGREEMENT_COLUMNS, SCORE_COLUMNS

LABEL = {"random": "Random", "byol": "BYOL", "spark": "SparK"}.get


def _row(explainer, method, region, metric, mean, half=0.005, kind="model", n=40, chance=0.03):
    return {"explainer": explainer, "method": method, "kind": kind, "region": region, "metric": metric,
            "mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n, "n_excluded": 0, "chance": chance}


def _scores(lesion=True, lung=True):
    """Grad-CAM: random above both baselines, BYOL below the uniform map, SparK at it; occlusion: all above."""
    rows = []
    values = {"gradcam": {"random": 0.064, "byol": 0.022, "spark": 0.031},
              "occlusion": {"random": 0.10, "byol": 0.09, "spark": 0.11}}
    for e, per in values.items():
        if lesion:
            rows += [_row(e, m, "lesion", "energy", v) for m, v in per.items()]
            rows += [_row(e, m, "lesion", "pointing", 2 * v) for m, v in per.items()]
            rows += [_row(e, "uniform-random", "lesion", "energy", 0.032, kind="baseline"),
                     _row(e, "centre-gaussian", "lesion", "energy", 0.05, kind="baseline")]
        if lung:
            rows += [_row(e, m, "lung", "pointing", p, chance=0.3) for m, p in
                     zip(per, (0.7, 0.4, 0.55) if e == "gradcam" else (0.9, 0.8, 0.6))]
            rows += [_row(e, m, "lung", "energy", 0.45, chance=0.3) for m in per]
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def test_lesion_text_places_each_model_against_the_baselines_and_says_what_random_means():
    text = T.lesion_text(_scores(), label=LABEL)
    grad = next(line for line in text.splitlines() if line.startswith("- **Grad-CAM**"))
    assert "above both image-blind maps: Random 0.064 [0.059, 0.069]" in grad
    assert "below the uniform-random map: BYOL 0.022" in grad
    assert "not distinguishable from the uniform-random map: SparK 0.031" in grad
    assert "uniform-random map 0.032, centre Gaussian 0.050" in grad
    assert "Grad-CAM 1 and occlusion 3" in text  # models above the uniform map, per method
    assert "comes from occlusion for 3 of 3" in text
    assert ("Grad-CAM: the model without pre-training (Random, 0.064) puts more of its energy inside the lesion "
            "than every pre-trained model scored; its interval lies wholly above that of BYOL and SparK") in text
    assert "not about how well the models classify" in text  # what it does and does not mean
    assert "occlusion: the model without pre-training (Random, 0.100) puts more of its energy inside the lesion " \
           "than 1 of 2 pre-trained models scored (BYOL)" in text


def test_random_below_pretrained_gives_no_caveat_and_constant_models_are_named():
    s = _scores(lung=False)
    s = s[s["explainer"] == "gradcam"].copy()
    s.loc[(s.method == "random") & (s.metric == "energy"), ["mean", "ci_low", "ci_high"]] = [0.01, 0.005, 0.015]
    s.loc[(s.method == "spark") & (s.metric == "energy"), ["mean", "ci_low", "ci_high"]] = np.nan
    text = T.lesion_text(s, label=LABEL)
    assert "every pre-trained model scored puts more of its energy inside the lesion than the model without " \
           "pre-training (Random, 0.010)" in text
    assert "BYOL lies wholly above its interval" in text and "SparK: every map constant" in text
    assert "not about how well" not in text


def test_lung_text_measures_the_papers_claim():
    text = T.lung_text(_scores(), label=LABEL)
    assert "the majority of focus points are located in the lung" in text
    grad = next(line for line in text.splitlines() if line.startswith("- **Grad-CAM**"))
    assert "the lung covers 0.300 of the image" in grad and "2 of 3 models" in grad
    assert "Random 0.700 / 0.450; BYOL 0.400 / 0.450" in grad
    assert "3 of 3 models" in next(line for line in text.splitlines() if line.startswith("- **occlusion**"))


def test_agreement_text_names_the_method_closest_to_occlusion():
    rows = []
    for m, rs in {"random": (0.1, 0.3, 0.2), "byol": (0.0, 0.25, -0.1), "spark": (0.05, 0.1, 0.15)}.items():
        for e, r in zip(("gradcam", "layercam", "hirescam"), rs):
            rows.append({"method": m, "explainer": e, "reference": "occlusion", "mean_r": r, "ci_low": r - 0.05,
                         "ci_high": r + 0.05, "n": 30, "n_constant": 0})
    text = T.agreement_text(pd.DataFrame(rows, columns=AGREEMENT_COLUMNS), label=LABEL)
    assert "LayerCAM 0.217, HiResCAM 0.083 and Grad-CAM 0.050" in text
    assert "LayerCAM agrees best on average and is the best for 2 of 3 models" in text
    assert "its interval lies above zero for 3 of 3 models" in text
    assert T.agreement_text(pd.DataFrame(columns=AGREEMENT_COLUMNS)) == ""


def test_without_lesion_masks_nothing_is_said_about_masks():
    no_lesion = _scores(lesion=False)
    text = T.findings(no_lesion, None, label=LABEL)
    assert text and "lesion" not in text.lower() and "mask" not in text.lower()
    assert T.findings(pd.DataFrame(columns=SCORE_COLUMNS), None) == ""
    assert T.measures_text(pd.DataFrame(columns=SCORE_COLUMNS)) == ""
    assert "lesion" not in T.measures_text(no_lesion)
    assert "pointing game" in T.measures_text(_scores(lung=False), 4) and "4 px" in T.measures_text(_scores(), 4)
    assert T.score_grid(pd.DataFrame(columns=SCORE_COLUMNS)).empty


def test_coverage_states_the_caps_and_the_occluder():
    labels = np.array([1] * 64 + [0] * 64)
    meta = {"n_available": 203, "split": "test", "stage": "layer1",
            "occlusion": {"size": 8, "stride": 8, "fill": 0, "max_images": 32, "on": "positive"}}
    text = T.coverage_text(meta, labels, n_occlusion=32, explainers=["gradcam", "layercam", "occlusion"], side=64)
    assert "128 of the 203 test images" in text and "Grad-CAM and LayerCAM read the same layer (`layer1`)" in text
    assert "32 of the 64 explained images of the finding" in text
    assert "a square of 8 × 8 px and grey value 0" in text and "steps of 8 px (64 positions per image)" in text
    assert "all 20 test images" in T.coverage_text({"n_available": 20, "split": "test"}, np.zeros(20))
    assert "Occlusion" not in T.coverage_text({"n_available": 20}, np.zeros(20), explainers=["gradcam"])


def test_score_grid_is_one_row_per_region_and_method():
    g = T.score_grid(_scores(), "energy")
    assert list(g.columns) == ["Random", "BYOL", "SparK", "uniform random", "centre Gaussian"]
    assert ("lesion", "Grad-CAM") in g.index and ("lung", "occlusion") in g.index
    assert g.loc[("lesion", "Grad-CAM"), "Random"] == "0.064 [0.059, 0.069]"


def test_constant_maps_everywhere_degrade_to_one_sentence_each():
    s = _scores()
    cam = s["explainer"] == "gradcam"
    s.loc[cam & (s.kind == "model"), ["mean", "ci_low", "ci_high"]] = np.nan  # every Grad-CAM map constant
    text = T.findings(s, None, label=LABEL)
    assert "- **Grad-CAM**: every map of every model is constant" in text
    assert "(0 images" not in text and "n/a" not in text
    assert "Random initialisation against pre-training.** occlusion:" in text
    assert "hiding the lesion lowers the probability" in text and "gradient map can miss" not in text
    nan = pd.DataFrame([{"method": "random", "explainer": "gradcam", "reference": "occlusion", "mean_r": np.nan,
                         "ci_low": np.nan, "ci_high": np.nan, "n": 0, "n_constant": 4}], columns=AGREEMENT_COLUMNS)
    assert T.agreement_text(nan).startswith("No gradient map could be compared with occlusion")
