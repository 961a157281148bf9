"""Statistics of Grad-CAM heat maps: agreement between methods, localisation of lesions.

Wolf et al. 2023 (Results, Figure 4) compare the methods' heat maps by the Pearson correlation of
two methods' maps of the same image, averaged over the test set (means of 0.02-0.07). This module
holds that statistic and what the paper leaves out; it computes nothing with a model (the maps
come from :mod:`ssl_lib.explain`) and imports no torch.

- :func:`correlation_table`: per-image Pearson r for every pair of methods, mean with a
  bootstrap 95 % interval over images. A constant map (e.g. all zero after Grad-CAM's ReLU) has
  no defined correlation: such images are left out of that pair and counted (``n_constant``).
- :func:`localisation_table`: where a lesion mask exists, the share of heat-map energy inside
  the mask and the pointing-game hit rate (is the map's maximum inside the mask, dilated by a
  tolerance?), on positive images with a non-empty mask, next to two baselines that know nothing
  of the image: a uniform-random map (scores about the mask's area fraction) and a centre
  Gaussian prior. Constant maps are left out and counted (``n_excluded``).
- :func:`explanation_table`: the same scores for every explanation method (Grad-CAM and the
  others of :mod:`ssl_lib.explainers`) in one long table with an ``explainer`` column, for the
  lesion and, where lung masks exist, for the lung: the paper's "the majority of focus points
  are located in the lung", measured (energy share inside the lung, pointing-in-lung rate).
- :func:`agreement_table`: per init, the per-image Pearson r of each gradient map with the
  occlusion map of the same model and image (mean, bootstrap interval): which gradient method
  shows what hiding the image shows.

The tables take a :class:`ssl_lib.explain.HeatMaps` (anything with its ``maps``, ``masks``,
``labels`` and ``task_kind``) or a mapping init -> maps. Shapes: masks uint8 ``(N, H, W)``
(1 = lesion); maps float ``(N, H, W)``; labels int ``(N,)``.
"""

from __future__ import annotations

from itertools import combinations
from typing import Mapping

import numpy as np
import pandas as pd

from .errors import SslCtError

__all__ = ["ExplainError", "SCORE_COLUMNS", "AGREEMENT_COLUMNS", "agreement_table", "any_scored", "bootstrap_mean",
           "centre_gaussian_maps", "correlation_matrix", "correlation_table", "dilate_masks", "energy_share",
           "explanation_table", "localisation_table", "n_constant", "pearson_per_image", "pointing_hits",
           "uniform_random_maps"]

#: A map whose max - min is at most this is constant (no defined correlation, no maximum).
_CONST_EPS = 1e-6


class ExplainError(SslCtError, ValueError):
    """Missing models or unusable inputs of the Grad-CAM step; the message names the file and the problem."""


def any_scored(table: pd.DataFrame, column: str = "mean") -> bool:
    """Whether any model of ``table`` (a correlation, localisation or agreement table) has a
    defined score in ``column``: where every map was constant there is nothing to draw."""
    if table is None or len(table) == 0 or column not in table:
        return False
    rows = table[table["kind"] == "model"] if "kind" in table else table
    return bool(rows[column].notna().any())


def _maps_of(maps) -> dict[str, np.ndarray]:
    """init -> maps of a :class:`~ssl_lib.explain.HeatMaps` (its ``maps``) or of a mapping."""
    return dict(maps.maps) if hasattr(maps, "maps") else dict(maps)


def n_constant(maps: np.ndarray) -> int:
    """How many of the maps ``(N, H, W)`` are constant (max - min <= 1e-6)."""
    return int(np.sum(np.ptp(maps.reshape(len(maps), -1), axis=1) <= _CONST_EPS)) if len(maps) else 0


# ----------------------------------------------------------------------------------------------
# Agreement between methods


def pearson_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of ``a[i]`` and ``b[i]`` over pixels, float64 ``(N,)``; NaN where either map is
    constant (its correlation is undefined)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ExplainError(f"heat maps differ in shape: {a.shape} vs {b.shape}")
    const = (np.ptp(a, axis=1) <= _CONST_EPS) | (np.ptp(b, axis=1) <= _CONST_EPS)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    denom = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    r = np.full(len(a), np.nan)
    ok = ~const & (denom > 0)
    r[ok] = np.clip((a[ok] * b[ok]).sum(1) / denom[ok], -1.0, 1.0)
    return r


def bootstrap_mean(values: np.ndarray, *, n_boot: int = 1000, ci: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap ``ci`` interval (resampling values)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.nan, np.nan, np.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    lo, hi = np.quantile(means, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(v.mean()), float(lo), float(hi)


def correlation_table(maps: Mapping[str, np.ndarray] | object, *, n_boot: int = 1000, ci: float = 0.95,
                      seed: int = 0) -> pd.DataFrame:
    """For every pair of methods, the per-image Pearson r of their heat maps averaged over images.

    Columns: ``init_a, init_b, mean_r, ci_low, ci_high, n, n_constant`` — ``n`` images with a
    defined r, ``n_constant`` left out because one of the two maps is constant. The interval is a
    percentile bootstrap over images (the paper gives the mean only).
    """
    maps = _maps_of(maps)
    rows = []
    for k, (a, b) in enumerate(combinations(list(maps), 2)):
        r = pearson_per_image(maps[a], maps[b])
        mean, lo, hi = bootstrap_mean(r, n_boot=n_boot, ci=ci, seed=seed + k)
        rows.append({"init_a": a, "init_b": b, "mean_r": mean, "ci_low": lo, "ci_high": hi,
                     "n": int(np.isfinite(r).sum()), "n_constant": int(np.isnan(r).sum())})
    return pd.DataFrame(rows, columns=["init_a", "init_b", "mean_r", "ci_low", "ci_high", "n", "n_constant"])


def correlation_matrix(table: pd.DataFrame, value: str = "mean_r") -> pd.DataFrame:
    """Square, symmetric matrix of ``value`` from :func:`correlation_table` (diagonal 1)."""
    inits = list(dict.fromkeys(list(table["init_a"]) + list(table["init_b"])))
    mat = pd.DataFrame(np.eye(len(inits)), index=inits, columns=inits)
    for row in table.itertuples(index=False):
        mat.loc[row.init_a, row.init_b] = mat.loc[row.init_b, row.init_a] = getattr(row, value)
    return mat


# ----------------------------------------------------------------------------------------------
# Localisation against lesion masks


def dilate_masks(masks: np.ndarray, tolerance: float = 0) -> np.ndarray:
    """bool ``(N, H, W)``: pixels within ``tolerance`` pixels (Euclidean) of the mask."""
    m = np.asarray(masks) > 0
    if tolerance <= 0:
        return m
    from scipy.ndimage import distance_transform_edt

    out = np.empty_like(m)
    for i in range(len(m)):
        out[i] = distance_transform_edt(~m[i]) <= tolerance if m[i].any() else m[i]
    return out


def energy_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each map's energy inside the mask: ``sum(map * mask) / sum(map)``, ``(N,)``;
    NaN for an all-zero map (no energy to share)."""
    m = np.asarray(maps, np.float64).reshape(len(maps), -1)
    k = (np.asarray(masks) > 0).reshape(len(masks), -1)
    total = m.sum(1)
    out = np.full(len(m), np.nan)
    ok = total > 0
    out[ok] = (m * k).sum(1)[ok] / total[ok]
    return out


def pointing_hits(maps: np.ndarray, masks: np.ndarray, tolerance: float = 0) -> np.ndarray:
    """Pointing game: 1.0 if the map's maximum (first one, row-major) lies inside the mask
    dilated by ``tolerance`` pixels, else 0.0; NaN for a constant map (no maximum), ``(N,)``."""
    m = np.asarray(maps, np.float64).reshape(len(maps), -1)
    k = dilate_masks(masks, tolerance).reshape(len(masks), -1)
    hits = k[np.arange(len(m)), m.argmax(1)].astype(np.float64)
    hits[np.ptp(m, axis=1) <= _CONST_EPS] = np.nan
    return hits



def uniform_random_maps(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Baseline: i.i.d. uniform-random maps float32 ``(N, H, W)`` (expected energy share = the
    mask's area fraction; pointing hit rate = the dilated mask's area fraction)."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def centre_gaussian_maps(shape: tuple[int, int, int], sigma: float = 0.25) -> np.ndarray:
    """Baseline: a Gaussian at the image centre (``sigma`` as a fraction of the side), the same
    for every image, float32 ``(N, H, W)`` in ``[0, 1]``."""
    n, h, w = shape
    y = (np.arange(h) - (h - 1) / 2) / (sigma * h)
    x = (np.arange(w) - (w - 1) / 2) / (sigma * w)
    g = np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).astype(np.float32)
    return np.broadcast_to(g, (n, h, w))


def localisation_table(maps: Mapping[str, np.ndarray] | object, masks: np.ndarray | None = None,
                       labels: np.ndarray | None = None, *, positive_label: int | None = 1,
                       tolerance: float = 0, baselines: bool = True, n_boot: int = 1000,
                       ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Energy share inside the mask and pointing-game hit rate per method, with baselines.

    Scored on images whose label is ``positive_label`` (``None``: every label) and whose mask is
    not empty. With a :class:`HeatMaps`, masks and labels come from it (``positive_label``
    defaults to all labels for a multi-class task). Columns: ``method, kind`` (model or
    baseline), ``metric`` (energy | pointing), ``mean, ci_low, ci_high`` (percentile bootstrap
    over images), ``n`` scored, ``n_excluded`` (constant maps), ``chance`` (mean area fraction of
    the mask, dilated for pointing: what a random map scores in expectation). Empty when there are
    no masks or no positive images with a lesion.
    """
    columns = ["method", "kind", "metric", "mean", "ci_low", "ci_high", "n", "n_excluded", "chance"]
    if hasattr(maps, "task_kind"):  # a HeatMaps
        heat = maps
        masks = heat.masks if masks is None else masks
        labels = heat.labels if labels is None else labels
        if heat.task_kind != "binary" and positive_label == 1:
            positive_label = None
        maps = heat.maps
    maps = dict(maps)
    if masks is None or not maps:
        return pd.DataFrame(columns=columns)
    masks = np.asarray(masks)
    keep = (masks.reshape(len(masks), -1) > 0).any(1)
    if positive_label is not None and labels is not None:
        keep &= np.asarray(labels) == positive_label
    if not keep.any():
        return pd.DataFrame(columns=columns)
    mk = masks[keep]
    area = (mk > 0).reshape(len(mk), -1).mean(1)
    area_dil = dilate_masks(mk, tolerance).reshape(len(mk), -1).mean(1)
    scored = [(init, "model", np.asarray(m)[keep]) for init, m in maps.items()]
    if baselines:
        scored += [("uniform-random", "baseline", uniform_random_maps(mk.shape, seed)),
                   ("centre-gaussian", "baseline", centre_gaussian_maps(mk.shape))]
    rows = []
    for k, (name, kind, m) in enumerate(scored):
        for metric, values, chance in (("energy", energy_share(m, mk), area),
                                       ("pointing", pointing_hits(m, mk, tolerance), area_dil)):
            mean, lo, hi = bootstrap_mean(values, n_boot=n_boot, ci=ci, seed=seed + k)
            rows.append({"method": name, "kind": kind, "metric": metric, "mean": mean, "ci_low": lo,
                         "ci_high": hi, "n": int(np.isfinite(values).sum()),
                         "n_excluded": int(np.isnan(values).sum()), "chance": float(chance.mean())})
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------------------------
# Every explanation method, lesion and lung


#: Columns of :func:`explanation_table`.
SCORE_COLUMNS = ["explainer", "method", "kind", "region", "metric", "mean", "ci_low", "ci_high", "n", "n_excluded",
                 "chance"]
#: Columns of :func:`agreement_table`.
AGREEMENT_COLUMNS = ["method", "explainer", "reference", "mean_r", "ci_low", "ci_high", "n", "n_constant"]


def _explainers_of(heat) -> list[str]:
    return list(getattr(heat, "explainers", ["gradcam"]))


def _maps_and_positions(heat, explainer: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if hasattr(heat, "maps_of"):
        return dict(heat.maps_of(explainer)), np.asarray(heat.positions_of(explainer), np.int64)
    return dict(heat.maps), np.arange(len(heat.labels))


def explanation_table(heat, *, tolerance: float = 0, n_boot: int = 1000, ci: float = 0.95,
                      seed: int = 0) -> pd.DataFrame:
    """:func:`localisation_table` for every explanation method of ``heat`` (a
    :class:`~ssl_lib.explain.HeatMaps`), lesion and lung, as one long table.

    Rows: per ``explainer`` the models (``kind="model"``, ``method`` = the init) and the two
    image-blind baselines (``kind="baseline"``) on the same images (an explainer that ran on a
    subset, e.g. occlusion, gets baselines of that subset); ``region="lesion"``: positive images
    with a lesion mask, pointing within ``tolerance`` px; ``region="lung"`` (where ``heat.lungs``
    exists): every image with a lung in its mask, energy share inside the lung and pointing-in-lung
    rate (no tolerance). ``chance``: the mean area share of the region (what a uniform map scores).
    Columns: :data:`SCORE_COLUMNS`. Empty (with those columns) when there is nothing to score.
    """
    frames = []
    lungs = getattr(heat, "lungs", None)
    for name in _explainers_of(heat):
        maps, pos = _maps_and_positions(heat, name)
        labels = np.asarray(heat.labels)[pos]
        positive = None if getattr(heat, "task_kind", "binary") != "binary" else 1
        regions = []
        if heat.masks is not None:
            regions.append(("lesion", np.asarray(heat.masks)[pos], positive, tolerance))
        if lungs is not None:
            regions.append(("lung", np.asarray(lungs)[pos].astype(np.uint8), None, 0))
        for k, (region, masks, label, tol) in enumerate(regions):
            # the same seed for every explainer: the same baseline maps on the same images
            t = localisation_table(maps, masks, labels, positive_label=label, tolerance=tol, n_boot=n_boot, ci=ci,
                                   seed=seed + 100 * k)
            if len(t):
                frames.append(t.assign(explainer=name, region=region))
    if not frames:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[SCORE_COLUMNS]


def agreement_table(heat, reference: str = "occlusion", *, n_boot: int = 1000, ci: float = 0.95,
                    seed: int = 0) -> pd.DataFrame:
    """Per init and explainer, the per-image Pearson r between its map and the ``reference``
    method's map (occlusion) of the same model and image, on the images the reference explained:
    mean with a percentile bootstrap ``ci`` interval over images, ``n`` images with a defined r,
    ``n_constant`` left out because one of the two maps is constant. Columns:
    :data:`AGREEMENT_COLUMNS`; empty when ``heat`` has no ``reference`` maps."""
    names = _explainers_of(heat)
    if reference not in names:
        return pd.DataFrame(columns=AGREEMENT_COLUMNS)
    ref, pos = _maps_and_positions(heat, reference)
    rows = []
    for j, name in enumerate(n for n in names if n != reference):
        maps, own = _maps_and_positions(heat, name)
        where = {int(p): i for i, p in enumerate(own)}
        missing = [int(p) for p in pos if int(p) not in where]
        if missing:
            raise ExplainError(f"{name} maps do not cover the {reference} images (positions {missing[:5]})")
        take = np.array([where[int(p)] for p in pos], np.int64)
        for k, init in enumerate(m for m in maps if m in ref):
            r = pearson_per_image(np.asarray(maps[init])[take], ref[init])
            mean, lo, hi = bootstrap_mean(r, n_boot=n_boot, ci=ci, seed=seed + 100 * j + k)
            rows.append({"method": init, "explainer": name, "reference": reference, "mean_r": mean, "ci_low": lo,
                         "ci_high": hi, "n": int(np.isfinite(r).sum()), "n_constant": int(np.isnan(r).sum())})
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
