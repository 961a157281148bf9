"""The Grad-CAM chapter's findings, written from its own tables at build time.

Wolf et al. 2023 (Figure 4) show Grad-CAM maps and say that "the majority of focus points are
located in the lung". The chapter measures where the maps of each initialisation's model lie,
with several explanation methods (:mod:`ssl_lib.explainers`), and this module turns those tables
into sentences, so that no number and no conclusion on the page is typed by hand:

- :func:`coverage_text`: which images were explained (e.g. "128 of 203 test images") and how
  occlusion was run (square, stride, fill, images);
- :func:`lesion_text`: per explanation method and init, the energy share inside the lesion
  against the two image-blind maps; what the model without pre-training (``random``) scores
  against the pre-trained ones, and what that does and does not mean;
- :func:`lung_text`: the paper's claim, measured: how often a map's maximum lies in the lung and
  how much of its energy does, against the lung's share of the image;
- :func:`agreement_text`: which gradient map agrees best with occlusion;
- :func:`findings`: all of them, skipping what the tables do not hold (no lesion masks: no word
  about masks; no lung masks, no occlusion: likewise).

Inputs are the tables of :mod:`ssl_lib.heatmap_stats` (:data:`~ssl_lib.heatmap_stats.SCORE_COLUMNS`,
:data:`~ssl_lib.heatmap_stats.AGREEMENT_COLUMNS`) and the cache's meta; output is Markdown.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .explainers import EXPLAINERS, explainer_label, occlusion_positions
from .pretrain.registry import init_label

__all__ = ["agreement_text", "chapter_text", "coverage_text", "findings", "heat_coverage", "lesion_text", "lung_text",
           "measures_text", "score_grid", "versus_baselines"]

RANDOM = "random"


def _kind(name: str) -> str:
    """The registry kind of an explainer; an unknown name counts as a class activation map."""
    return EXPLAINERS[name].kind if name in EXPLAINERS else "cam"


def _f(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def _ci(row) -> str:
    return f"{_f(row['mean'])} [{_f(row['ci_low'])}, {_f(row['ci_high'])}]"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _count(k: int, n: int, what: str) -> str:
    return f"{k} of {n} {what}"


def coverage_text(meta: Mapping, labels: np.ndarray, *, n_occlusion: int | None = None,
                  explainers: Sequence[str] = ("gradcam",), task_kind: str = "binary",
                  stage: str | None = None, side: int | None = None) -> str:
    """Which images the maps cover: ``meta["n_available"]`` (the split's labelled images) against
    the ``len(labels)`` explained, the class activation maps and their layer, and occlusion's
    square, stride and fill (``meta["occlusion"]``) on ``n_occlusion`` images (with ``side``, the
    image side in px, also the square's positions per image)."""
    n = len(labels)
    avail = meta.get("n_available")
    where = "test-fold" if meta.get("split") == "fold" else f"{meta.get('split', 'test')}"
    if avail is not None and avail > n:
        head = f"The maps cover {n} of the {avail} {where} images (a random subset, stratified by class)."
    else:
        head = f"The maps cover all {n} {where} images."
    cams = [explainer_label(e) for e in explainers if e != "occlusion"]
    layer = stage or meta.get("stage")
    out = [head, f"{_join(cams)} read the same layer (`{layer}`) of each model and explain the same class."]
    occ = meta.get("occlusion")
    if "occlusion" in explainers and occ and n_occlusion is not None:
        if occ.get("on") == "positive" and task_kind == "binary":
            pool, scope = int(np.sum(np.asarray(labels) == 1)), "explained images of the finding"
        else:
            pool, scope = n, "explained images"
        which = (f"all {pool} {scope}" if n_occlusion >= pool
                 else f"{n_occlusion} of the {pool} {scope} (a random subset)")
        where = ("" if side is None else
                 f" ({occlusion_positions(side, occ['size'], occ['stride']) ** 2} positions per image)")
        out.append(f"Occlusion sensitivity covers {which}: a square of {occ['size']} × {occ['size']} px and grey "
                   f"value {occ['fill']} (of 0-255) moved in steps of {occ['stride']} px{where}, one forward pass "
                   "per position; a pixel's value is how much hiding it lowers the probability of the explained class.")
    return " ".join(out)


def versus_baselines(mean: float, lo: float, hi: float, uniform: float, centre: float) -> str:
    """Where an interval ``[lo, hi]`` lies against the uniform-random and centre-Gaussian maps'
    means: ``"above both"``, ``"above uniform only"``, ``"below uniform"`` or ``"at uniform"``."""
    if not np.isfinite(mean):
        return "none"
    if lo > max(uniform, centre):
        return "above both"
    if lo > uniform:
        return "above uniform only"
    if hi < uniform:
        return "below uniform"
    return "at uniform"


_PHRASE = {"above both": "above both image-blind maps",
           "above uniform only": "above the uniform-random map only",
           "at uniform": "not distinguishable from the uniform-random map",
           "below uniform": "below the uniform-random map"}


def _block(scores: pd.DataFrame, explainer: str, region: str, metric: str):
    t = scores[(scores["explainer"] == explainer) & (scores["region"] == region) & (scores["metric"] == metric)]
    models = t[t["kind"] == "model"].set_index("method")
    base = t[t["kind"] == "baseline"].set_index("method")["mean"]
    return models, base


def _explainers(scores: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(scores["explainer"]))


def lesion_text(scores: pd.DataFrame, *, label: Callable[[str], str] = init_label) -> str:
    """The lesion findings (Markdown; empty without lesion rows): per explainer, each init's energy
    share inside the lesion against the uniform-random and centre-Gaussian maps (by its 95 %
    interval); the model without pre-training against the pre-trained ones; which method gives
    each model its highest share."""
    scores = scores[scores["region"] == "lesion"] if len(scores) else scores
    if not len(scores):
        return ""
    out, blank = [], []
    explainers = _explainers(scores)
    verdicts: dict[str, dict[str, str]] = {}
    for e in explainers:
        models, base = _block(scores, e, "lesion", "energy")
        if models.empty:
            continue
        u, c = float(base.get("uniform-random", np.nan)), float(base.get("centre-gaussian", np.nan))
        groups: dict[str, list[str]] = {}
        for init, row in models.iterrows():
            v = versus_baselines(row["mean"], row["ci_low"], row["ci_high"], u, c)
            verdicts.setdefault(e, {})[init] = v
            groups.setdefault(v, []).append(f"{label(init)} {_ci(row)}" if v != "none" else label(init))
        if set(groups) == {"none"}:
            blank.append(explainer_label(e))
            continue
        n_img = int(models["n"].max())
        parts = [f"{_PHRASE[v]}: {_join(groups[v])}" for v in _PHRASE if v in groups]
        if "none" in groups:
            parts.append(f"every map constant, no score: {_join(groups['none'])}")
        out.append(f"- **{explainer_label(e)}** ({n_img} images; uniform-random map {_f(u)}, centre Gaussian "
                   f"{_f(c)}): " + "; ".join(parts) + ".")
    if blank:
        out.append(f"- **{_join(blank)}**: every map of every model is constant (no positive evidence for the "
                   "explained class), so there is nothing to place.")
    if not out:
        return ""
    text = ["**Where the maps lie: the lesion.** Share of each map's energy inside the lesion mask, on the "
            "positive images with a lesion, mean [95 % interval] per model, against two maps that ignore the "
            "image (a model's interval above a baseline's mean counts as above it):", "", *out, ""]
    summary = []
    for e in explainers:
        v = verdicts.get(e, {})
        if v and explainer_label(e) not in blank:
            k = sum(x in ("above both", "above uniform only") for x in v.values())
            summary.append(f"{explainer_label(e)} {k}")
    if len(summary) > 1:
        n_models = max(len(v) for v in verdicts.values())
        text.append(f"Models whose maps lie above the uniform-random map, of {n_models}: {_join(summary)}.")
    best = _best_explainer_per_init(scores)
    if best:
        top = pd.Series(best).value_counts()
        per = [f"{explainer_label(e)} for {k} of {len(best)}" for e, k in top.items()]
        text.append(f"The highest lesion share of a model comes from {_join(per)}.")
    rnd = _random_text(scores, label)
    if rnd:
        text += ["", rnd]
    return "\n".join(text).strip()


def _best_explainer_per_init(scores: pd.DataFrame) -> dict[str, str]:
    t = scores[(scores["region"] == "lesion") & (scores["metric"] == "energy") & (scores["kind"] == "model")]
    t = t[np.isfinite(t["mean"].astype(float))]
    if t.empty or t["explainer"].nunique() < 2:
        return {}
    return {init: g.loc[g["mean"].astype(float).idxmax(), "explainer"] for init, g in t.groupby("method", sort=False)}


def _random_text(scores: pd.DataFrame, label: Callable[[str], str]) -> str:
    """The model without pre-training against the pre-trained ones, per explainer, on lesion energy."""
    out, beats_on_first = [], None
    for e in _explainers(scores):
        models, _ = _block(scores, e, "lesion", "energy")
        if RANDOM not in models.index or len(models) < 2:
            continue
        finite = np.isfinite(models["mean"].astype(float))
        unscored = [label(i) for i in models.index[~finite]]
        models = models[finite]
        if RANDOM not in models.index or len(models) < 2:
            continue
        r = models.loc[RANDOM]
        pre = models.drop(index=RANDOM)
        below = [i for i, row in pre.iterrows() if row["mean"] < r["mean"]]
        clear = [i for i, row in pre.iterrows() if row["ci_high"] < r["ci_low"]]
        n = len(pre)
        rnd = f"the model without pre-training (Random, {_f(r['mean'])})"
        if len(below) == n:
            every = "the" if n == 1 else "every"
            s = f"{rnd} puts more of its energy inside the lesion than {every} pre-trained model scored"
        elif not below:
            s = f"every pre-trained model scored puts more of its energy inside the lesion than {rnd}"
        else:
            s = (f"{rnd} puts more of its energy inside the lesion than "
                 f"{_count(len(below), n, 'pre-trained models')} scored ({_join([label(i) for i in below])})")
        above = [i for i, row in pre.iterrows() if row["ci_low"] > r["ci_high"]]
        if clear:
            s += f"; its interval lies wholly above that of {_join([label(i) for i in clear])}"
        if above:
            s += f"; {_join([label(i) for i in above])} lie{'s' if len(above) == 1 else ''} wholly above its interval"
        if not clear and not above:
            s += "; the intervals overlap, so these test images alone do not separate them"
        if unscored:
            s += f" ({_join(unscored)}: every map constant, no score)"
        out.append(f"{explainer_label(e)}: {s}.")
        if beats_on_first is None:
            beats_on_first = (e, bool(below))
    if not out:
        return ""
    text = "**Random initialisation against pre-training.** " + " ".join(out)
    if beats_on_first and beats_on_first[1]:  # random beats a pre-trained model on the first method scored
        text += (" This is about where the maps lie, not about how well the models classify (their test AUCs are in "
                 "the Results chapter).")
        if _kind(beats_on_first[0]) == "cam":
            text += (" A larger share inside the lesion says that the gradient map of the model without pre-training "
                     "is more concentrated on the finding, not that pre-training made the models look elsewhere: a "
                     "gradient map can miss what a model uses, and occlusion, which asks the model directly, is the "
                     "check.")
        else:
            text += (" It says that hiding the lesion lowers the probability of the model without pre-training more "
                     "than that of the others, relative to hiding the rest of the image.")
    return text


def lung_text(scores: pd.DataFrame, *, label: Callable[[str], str] = init_label) -> str:
    """The paper's claim, measured (Markdown; empty without lung rows): per explainer, how many
    models point into the lung with over half of their maps, each model's pointing-in-lung rate and
    energy share inside the lung, against the lung's share of the image."""
    scores = scores[scores["region"] == "lung"] if len(scores) else scores
    if not len(scores):
        return ""
    out, blank = [], []
    for e in _explainers(scores):
        point, _ = _block(scores, e, "lung", "pointing")
        energy, _ = _block(scores, e, "lung", "energy")
        if point.empty:
            continue
        area = float(energy["chance"].iloc[0]) if len(energy) else float(point["chance"].iloc[0])
        finite = point[np.isfinite(point["mean"].astype(float))]
        if finite.empty:
            blank.append(explainer_label(e))
            continue
        major = [i for i, row in finite.iterrows() if row["mean"] > 0.5]
        each = "; ".join(f"{label(i)} {_f(row['mean'])} / {_f(energy.loc[i, 'mean']) if i in energy.index else 'n/a'}"
                         for i, row in point.iterrows())
        out.append(f"- **{explainer_label(e)}** ({int(point['n'].max())} images; the lung covers {_f(area)} of the "
                   f"image): maximum in the lung for over half of the images in "
                   f"{_count(len(major), len(finite), 'models scored')}. Pointing rate / energy share: {each}.")
    if blank:
        out.append(f"- **{_join(blank)}**: every map of every model is constant, nothing to place.")
    if not out:
        return ""
    return "\n".join(["**The paper's claim: are the focus points in the lung?** Wolf et al. write that \"the majority "
                      "of focus points are located in the lung\". Measured here per model: the share of images whose "
                      "map has its maximum inside the lung (the pointing rate; a map that ignores the image scores "
                      "about the lung's share of the image) and the share of the map's energy inside the lung:",
                      "", *out]).strip()


def agreement_text(agreement: pd.DataFrame, *, label: Callable[[str], str] = init_label) -> str:
    """Which gradient map agrees best with occlusion (Markdown; empty without the table): the mean
    over models of each method's mean per-image Pearson r with the occlusion map, how often each is
    the best for a model, and whether the best one's intervals exclude zero."""
    if agreement is None or not len(agreement):
        return ""
    t = agreement[np.isfinite(agreement["mean_r"].astype(float))]
    if t.empty:
        ref = explainer_label(str(agreement["reference"].iloc[0]))
        return (f"No gradient map could be compared with {ref}: on the images {ref} explained, every gradient map "
                f"or every {ref} map is constant.")
    avg = t.groupby("explainer", sort=False)["mean_r"].mean().sort_values(ascending=False)
    best_per = t.loc[t.groupby("method", sort=False)["mean_r"].idxmax()]
    wins = best_per["explainer"].value_counts()
    top = avg.index[0]
    tt = t[t["explainer"] == top]
    above0 = int((tt["ci_low"] > 0).sum())
    ref = explainer_label(str(t["reference"].iloc[0]))
    ranking = _join([f"{explainer_label(e)} {_f(v)}" for e, v in avg.items()])
    text = (f"**Which gradient map agrees with {ref}?** Mean over the {t['method'].nunique()} models of the per-image "
            f"Pearson r between a gradient map and the {ref} map of the same model and image: {ranking}. "
            f"{explainer_label(top)} agrees best on average and is the best for "
            f"{_count(int(wins.get(top, 0)), t['method'].nunique(), 'models')}; its interval lies above zero for "
            f"{_count(above0, len(tt), 'models')}.")
    if (tt["ci_high"] < 0).any():
        neg = [label(i) for i in tt.loc[tt["ci_high"] < 0, "method"]]
        text += f" For {_join(neg)} it is negatively correlated with {ref}."
    return text


def findings(scores: pd.DataFrame, agreement: pd.DataFrame | None = None, *,
             label: Callable[[str], str] = init_label) -> str:
    """The chapter's findings from the long localisation table and the agreement table (Markdown);
    parts without data are left out; an empty string when nothing can be said."""
    parts = [lesion_text(scores, label=label), lung_text(scores, label=label),
             agreement_text(agreement, label=label) if agreement is not None else ""]
    return "\n\n".join(p for p in parts if p)


def heat_coverage(heat) -> str:
    """:func:`coverage_text` of a :class:`~ssl_lib.explain.HeatMaps` (its meta, labels, methods)."""
    n_occ = len(heat.positions_of("occlusion")) if "occlusion" in heat.explainers else None
    return coverage_text(heat.meta, heat.labels, n_occlusion=n_occ, explainers=heat.explainers,
                         task_kind=heat.task_kind, side=int(heat.images.shape[-1]))


def chapter_text(result) -> str:
    """:func:`heat_coverage` and :func:`findings` of a :class:`~ssl_lib.explain.GradCamResult`."""
    rest = findings(result.localisation, getattr(result, "agreement", None))
    return heat_coverage(result.heat) + ("\n\n" + rest if rest else "")


def measures_text(scores: pd.DataFrame, tolerance: float | None = None) -> str:
    """What the localisation table measures, for the regions it holds (Markdown; empty for an empty
    table): energy share and pointing game in the lesion (positive images with a mask, pointing
    within ``tolerance`` px) and in the lung (every image), the two image-blind maps, ``chance``."""
    if scores is None or not len(scores):
        return ""
    regions = set(scores["region"])
    out = []
    if "lesion" in regions:
        tol = f", dilated by {tolerance:g} px" if tolerance else ""
        out.append("**Lesion**, on the positive test images with a non-empty lesion mask: the *energy share* (the "
                   "part of a map's total inside the mask) and the *pointing game* (is the map's maximum inside "
                   f"the mask{tol}?).")
    if "lung" in regions:
        plus = ", with the lesion mask added where one exists" if "lesion" in regions else ""
        out.append("**Lung**, on every explained image where a lung was found: the same two measures for the lung "
                   "(no tolerance). The lung is derived from the image (the large dark regions enclosed by the body, "
                   f"`ssl_lib.lung_mask`){plus}.")
    out.append("Two maps that ignore the image set the bar (hatched): a uniform-random map (its expected score is "
               "the region's area share, column `chance`) and a centre-Gaussian prior, each on the images the "
               "method explained. Intervals are bootstrap 95 % over images; constant maps are left out "
               "(`n_excluded`).")
    return "\n\n".join(out)


def score_grid(scores: pd.DataFrame, metric: str = "energy") -> pd.DataFrame:
    """The long table in one screen: rows (region, explanation method), columns the models and the
    two image-blind maps, cells ``mean [ci_low, ci_high]`` of ``metric``. Empty for an empty table."""
    if scores is None or not len(scores):
        return pd.DataFrame()
    t = scores[scores["metric"] == metric].copy()
    t["cell"] = [f"{_f(m)} [{_f(a)}, {_f(b)}]" for m, a, b in zip(t["mean"], t["ci_low"], t["ci_high"])]
    t["explainer"] = [explainer_label(e) for e in t["explainer"]]
    cols = list(dict.fromkeys(t["method"]))
    grid = t.pivot_table(index=["region", "explainer"], columns="method", values="cell", aggfunc="first", sort=False)
    grid = grid[[c for c in cols if c in grid.columns]]
    labels = {"uniform-random": "uniform random", "centre-gaussian": "centre Gaussian"}
    grid.columns = [labels.get(c, init_label(c)) for c in grid.columns]
    grid.columns.name = None
    return grid
