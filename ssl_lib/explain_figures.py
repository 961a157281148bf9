"""Figures and the heat-map browser of the Grad-CAM step (Wolf et al. 2023, Figure 4).

Presentation only: everything here draws what :mod:`ssl_lib.explain` computed (a
:class:`~ssl_lib.explain.HeatMaps` and the tables of :mod:`ssl_lib.heatmap_stats`).

- :func:`plot_examples`: the paper's Figure 4 layout (input, then one Grad-CAM overlay per method);
- :func:`plot_correlation`: seaborn heat map of the mean per-image correlation between methods;
- :func:`plot_localisation`: energy share and pointing-game hit rate per model and explanation
  method (lesion; lung where measured), baselines hatched;
- :func:`plot_explainers`: one image explained by every method and model;
- :func:`plot_agreement`: each gradient map's correlation with occlusion, per model;
- :func:`heatmap_browser`: pick an image and a method (ipywidgets in JupyterLab, pre-drawn frames
  in the book), :func:`draw_heatmap` one such picture.

Shapes: images uint8 ``(N, H, W)``; maps float32 ``(N, H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .explain import HeatMaps, init_label
from .heatmap_stats import correlation_matrix

__all__ = ["draw_heatmap", "example_rows", "heatmap_browser", "plot_agreement", "plot_correlation", "plot_examples",
           "plot_explainers", "plot_localisation"]


def example_rows(heat: HeatMaps, n_examples: int = 2) -> np.ndarray:
    """Positions (into ``heat``) of the Figure 4 rows: ``n_examples`` images per class, the
    finding first for a binary task; positive images with a lesion mask are preferred."""
    order = [1, 0] if heat.task_kind == "binary" else sorted(np.unique(heat.labels).tolist())
    rows = []
    for c in order:
        pos = np.flatnonzero(heat.labels == c)
        if heat.masks is not None and len(pos):
            has = heat.masks[pos].reshape(len(pos), -1).any(1)
            pos = np.concatenate([pos[has], pos[~has]])
        rows.extend(pos[:n_examples].tolist())
    return np.asarray(rows, np.int64)


def _overlay(ax, image, heat_map, alpha, cmap):
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if heat_map is not None:
        ax.imshow(heat_map, cmap=cmap, vmin=0, vmax=1, alpha=alpha, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_examples(heat: HeatMaps, n_examples: int = 2, *, rows: Sequence[int] | None = None,
                  inits: Sequence[str] | None = None, alpha: float = 0.5, cmap: str = "jet",
                  show_mask: bool = True, panel_size: float = 1.25):
    """The paper's Figure 4: one image per row (``n_examples`` per class, finding first, or the
    given positions ``rows``), the input in the first column (lesion outline in white where a
    mask exists), then one Grad-CAM overlay per method with the probability it gives the
    explained class, and a colour bar of the map's scale (min-max scaled per map to [0, 1]).
    Returns a matplotlib Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    rows = example_rows(heat, n_examples) if rows is None else np.asarray(rows, np.int64)
    inits = heat.inits if inits is None else list(inits)
    n_r, n_c = max(len(rows), 1), 1 + len(inits)
    fig, axes = plt.subplots(n_r, n_c, figsize=(panel_size * n_c + 0.8, panel_size * n_r + 0.5), squeeze=False,
                             layout="constrained")
    for r, i in enumerate(rows):
        ax = axes[r, 0]
        _overlay(ax, heat.images[i], None, alpha, cmap)
        if show_mask and heat.masks is not None and heat.masks[i].any():
            ax.contour(heat.masks[i], levels=[0.5], colors="white", linewidths=0.8)
        ax.set_ylabel(f"{heat.class_name(int(heat.labels[i]))}\n#{int(heat.indices[i])}", fontsize=9)
        for c, init in enumerate(inits, start=1):
            ax = axes[r, c]
            _overlay(ax, heat.images[i], heat.maps[init][i], alpha, cmap)
            if init in heat.probs:
                ax.text(0.02, 0.02, f"p={heat.probs[init][i]:.2f}", transform=ax.transAxes, fontsize=8,
                        color="white", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0})
    for c, title in enumerate(["Input"] + [init_label(i) for i in inits]):
        axes[0, c].set_title(title, fontsize=10)
    if not len(rows):
        for ax in axes.ravel():
            ax.axis("off")
    fig.suptitle(f"Grad-CAM, {heat.task} test images (p: probability of the explained class)", fontsize=10)
    if len(rows):
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=axes[:, 1:].ravel().tolist(), shrink=0.8,
                           fraction=0.04, pad=0.02)
        bar.set_label("heat (per map, scaled to [0, 1])", fontsize=9)
        bar.ax.tick_params(labelsize=8)
    return fig


def plot_correlation(table: pd.DataFrame, *, ax=None, annotate_ci: bool = True, cmap: str = "vlag"):
    """Seaborn heat map of the mean per-image correlation between methods (from
    :func:`correlation_table`), annotated with the mean and its 95 % interval. Returns the Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    mat = correlation_matrix(table)
    labels = [init_label(i) for i in mat.index]
    annot = mat.map(lambda v: f"{v:.2f}")
    if annotate_ci and len(table):
        lo, hi = correlation_matrix(table, "ci_low"), correlation_matrix(table, "ci_high")
        for a in mat.index:
            for b in mat.columns:
                if a != b:
                    annot.loc[a, b] = f"{mat.loc[a, b]:.2f}\n[{lo.loc[a, b]:.2f}, {hi.loc[a, b]:.2f}]"
    if ax is None:
        side = 1.1 + 1.1 * len(mat)
        fig, ax = plt.subplots(figsize=(side + 1.0, side))
    else:
        fig = ax.figure
    sns.heatmap(mat.astype(float), annot=annot.to_numpy(), fmt="", vmin=-1, vmax=1, center=0, cmap=cmap,
                square=True, xticklabels=labels, yticklabels=labels, ax=ax, annot_kws={"fontsize": 8},
                cbar_kws={"label": "mean Pearson r"})
    ax.set_title("Heat-map correlation between methods (per image, averaged)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_localisation(table: pd.DataFrame, region: str | None = None):
    """Energy share and pointing-game hit rate per model, grouped by init with one bar per
    explanation method (the long table of :func:`ssl_lib.heatmap_stats.explanation_table`; an older
    table without ``explainer``/``region`` columns is Grad-CAM on the lesion), the two image-blind
    maps as hatched groups, 95 % intervals, the region's area share (what a uniform map scores)
    dashed. One row of panels per region (lesion, lung) present, or only ``region``; ``None`` when
    the table is empty (nothing to draw). Returns the Figure."""
    import matplotlib.pyplot as plt

    from .explainers import explainer_label

    t = table.copy()
    if "explainer" not in t.columns:
        t["explainer"] = "gradcam"
    if "region" not in t.columns:
        t["region"] = "lesion"
    if region is not None:
        t = t[t["region"] == region]
    if t.empty:
        return None
    regions = list(dict.fromkeys(t["region"]))
    explainers = list(dict.fromkeys(t["explainer"]))
    names = {"lesion": "inside the lesion", "lung": "inside the lung"}
    # the text column's width, so the page never shows it scaled down
    fig, axes = plt.subplots(len(regions), 2, figsize=(8.2, 3.2 * len(regions)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for r, reg in enumerate(regions):
        for c, (metric, title) in enumerate((("energy", "energy share"), ("pointing", "pointing-game hit rate"))):
            ax = axes[r, c]
            sub = t[(t["region"] == reg) & (t["metric"] == metric)]
            groups = list(dict.fromkeys(sub["method"]))
            width = 0.8 / max(len(explainers), 1)
            for k, e in enumerate(explainers):
                s_e = sub[sub["explainer"] == e].set_index("method")
                xs = [g for g in groups if g in s_e.index]
                if not xs:
                    continue
                x = np.array([groups.index(g) for g in xs]) - 0.4 + width * (k + 0.5)
                rows = s_e.loc[xs]
                err = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]]).astype(float)
                bars = ax.bar(x, rows["mean"].astype(float), width, yerr=np.nan_to_num(err), capsize=2,
                              color=colors(k), edgecolor="black", linewidth=0.5, label=explainer_label(e))
                for bar, kind in zip(bars, rows["kind"]):
                    if kind == "baseline":
                        bar.set_hatch("//")
            ax.axhline(float(sub["chance"].astype(float).mean()), ls="--", color="black", lw=1,
                       label="area share")
            ax.set_xticks(np.arange(len(groups)), [init_label(m) for m in groups], rotation=30, ha="right", fontsize=8)
            top = np.nanmax(np.r_[sub["ci_high"].astype(float), sub["mean"].astype(float), sub["chance"].astype(float)])
            ax.set_ylim(0, min(1.0, 1.15 * top + 0.02) if np.isfinite(top) else 1.0)
            ax.set_title(f"{title} {names.get(reg, reg)}", fontsize=10)
            if r == 0 and c == 1:
                ax.legend(fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    return fig


def plot_agreement(table: pd.DataFrame, *, cmap: str = "vlag"):
    """Seaborn heat map of the mean per-image Pearson r of each gradient map with the occlusion map
    (:func:`ssl_lib.heatmap_stats.agreement_table`): one row per model, one column per method,
    annotated with the 95 % interval. ``None`` for an empty table. Returns the Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .explainers import explainer_label

    if table is None or not len(table):
        return None
    methods = list(dict.fromkeys(table["method"]))
    explainers = list(dict.fromkeys(table["explainer"]))
    mat = table.pivot(index="method", columns="explainer", values="mean_r").loc[methods, explainers].astype(float)
    lo = table.pivot(index="method", columns="explainer", values="ci_low").loc[methods, explainers]
    hi = table.pivot(index="method", columns="explainer", values="ci_high").loc[methods, explainers]
    annot = np.vectorize(lambda m, a, b: f"{m:.2f}\n[{a:.2f}, {b:.2f}]")(mat.to_numpy(), lo.to_numpy(float),
                                                                          hi.to_numpy(float))
    fig, ax = plt.subplots(figsize=(1.8 + 1.5 * len(explainers), 0.9 + 0.6 * len(methods)))
    sns.heatmap(mat, annot=annot, fmt="", vmin=-1, vmax=1, center=0, cmap=cmap, ax=ax, annot_kws={"fontsize": 8},
                xticklabels=[explainer_label(e) for e in explainers], yticklabels=[init_label(m) for m in methods],
                cbar_kws={"label": "mean Pearson r"})
    ref = explainer_label(str(table["reference"].iloc[0]))
    ax.set_title(f"Agreement with {ref} (per image, same model)", fontsize=10)
    ax.set_xlabel("")
    ax.set_ylabel("")
    fig.tight_layout()
    return fig


def plot_explainers(heat: HeatMaps, i: int | None = None, *, inits: Sequence[str] | None = None, alpha: float = 0.5,
                    cmap: str = "jet", panel_size: float = 1.35):
    """One image (position ``i``; default: the first image every method explained, a positive one
    with a lesion where possible) explained by every method (rows) and model (columns); the
    input with its lesion outline (white) and lung outline (cyan) on the left. Returns the Figure."""
    import matplotlib.pyplot as plt

    from .explainers import explainer_label

    names = heat.explainers
    common = set(range(len(heat)))
    for e in names:
        common &= set(heat.positions_of(e).tolist())
    if i is None:
        cand = sorted(common) or list(range(len(heat)))
        with_lesion = [k for k in cand if heat.masks is not None and heat.masks[k].any()]
        i = (with_lesion or cand)[0]
    inits = heat.inits if inits is None else list(inits)
    panel_size = min(panel_size, 8.2 / (1 + len(inits)))  # at most the text column wide
    fig, axes = plt.subplots(len(names), 1 + len(inits), figsize=(panel_size * (1 + len(inits)),
                                                                   panel_size * len(names) + 0.5), squeeze=False)
    for r, e in enumerate(names):
        ax = axes[r, 0]
        if r == 0:
            _overlay(ax, heat.images[i], None, alpha, cmap)
            if heat.lungs is not None and heat.lungs[i].any():
                ax.contour(heat.lungs[i].astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
            if heat.masks is not None and heat.masks[i].any():
                ax.contour(heat.masks[i], levels=[0.5], colors="white", linewidths=0.8)
        else:
            ax.axis("off")
        pos = {int(p): k for k, p in enumerate(heat.positions_of(e))}
        for c, init in enumerate(inits, start=1):
            ax = axes[r, c]
            m = heat.maps_of(e).get(init)
            _overlay(ax, heat.images[i], None if m is None or i not in pos else m[pos[i]], alpha, cmap)
            if c == 1:
                ax.set_ylabel(explainer_label(e), fontsize=9)
            if r == 0:
                ax.set_title(init_label(init), fontsize=10)
    axes[0, 0].set_title("Input", fontsize=10)
    fig.suptitle(f"Every explanation method, {heat.task} test image #{int(heat.indices[i])} "
                 f"({heat.class_name(int(heat.labels[i]))})", fontsize=10)
    fig.tight_layout()
    return fig


def draw_heatmap(heat: HeatMaps, i: int, init: str, alpha: float = 0.5, cmap: str = "jet"):
    """Image ``i`` of ``heat`` (lesion outline in white where a mask exists) beside ``init``'s heat map on it."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    _overlay(axes[0], heat.images[i], None, alpha, cmap)
    if heat.masks is not None and heat.masks[i].any():
        axes[0].contour(heat.masks[i], levels=[0.5], colors="white", linewidths=0.8)
    axes[0].set_title(f"input #{int(heat.indices[i])} ({heat.class_name(int(heat.labels[i]))})", fontsize=10)
    _overlay(axes[1], heat.images[i], heat.maps[init][i], alpha, cmap)
    p = f", p={heat.probs[init][i]:.2f}" if init in heat.probs else ""
    axes[1].set_title(f"{init_label(init)}{p}", fontsize=10)
    fig.tight_layout()
    return fig


def heatmap_browser(heat: HeatMaps, *, cmap: str = "jet", max_images: int = 8):
    """Pick an image and a method: ipywidgets in JupyterLab (with the overlay strength); in a
    batch run (the book) a :func:`ssl_lib.viewer.frame_viewer` over ``max_images`` images x methods."""
    from .viewer import evenly_spaced, frame_viewer
    from .widgets import batch_run

    names = [f"#{int(heat.indices[i])} {heat.class_name(int(heat.labels[i]))}" for i in range(len(heat))]
    if batch_run():
        if not len(heat) or not heat.inits:
            from IPython.display import Markdown

            return Markdown("*No heat maps to browse.*")
        picks = evenly_spaced(len(heat), max_images)
        return frame_viewer(lambda k, m: draw_heatmap(heat, picks[k], heat.inits[m], 0.5, cmap),
                            [("image", [names[i] for i in picks]), ("method", [init_label(i) for i in heat.inits])],
                            slider=[True, False])
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    image = widgets.Dropdown(options=[(name, i) for i, name in enumerate(names)], description="image")
    method = widgets.Dropdown(options=[(init_label(i), i) for i in heat.inits], description="method")
    alpha = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="overlay")
    out = widgets.Output()

    def draw(*_):
        with out:
            out.clear_output(wait=True)
            fig = draw_heatmap(heat, image.value, method.value, alpha.value, cmap)
            display(fig)
            plt.close(fig)

    for w in (image, method, alpha):
        w.observe(draw, names="value")
    if len(heat) and heat.inits:
        draw()
    return widgets.VBox([widgets.HBox([image, method, alpha]), out])
