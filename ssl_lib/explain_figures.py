"""Figures and the heat-map browser of the Grad-CAM step (Wolf et al. 2023, Figure 4).

Presentation only: everything here draws what :mod:`ssl_lib.explain` computed (a
:class:`~ssl_lib.explain.HeatMaps` and the tables of :mod:`ssl_lib.heatmap_stats`).

- :func:`plot_examples`: the paper's Figure 4 layout (input, then one Grad-CAM overlay per method);
- :func:`plot_correlation`: seaborn heat map of the mean per-image correlation between methods;
- :func:`plot_localisation`: energy share and pointing-game hit rate per method, baselines hatched;
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

__all__ = ["draw_heatmap", "example_rows", "heatmap_browser", "plot_correlation", "plot_examples",
           "plot_localisation"]


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
                  show_mask: bool = True, panel_size: float = 1.35):
    """The paper's Figure 4: one image per row (``n_examples`` per class, finding first, or the
    given positions ``rows``), the input in the first column (lesion outline in white where a
    mask exists), then one Grad-CAM overlay per method with the probability it gives the
    explained class. Returns a matplotlib Figure."""
    import matplotlib.pyplot as plt

    rows = example_rows(heat, n_examples) if rows is None else np.asarray(rows, np.int64)
    inits = heat.inits if inits is None else list(inits)
    n_r, n_c = max(len(rows), 1), 1 + len(inits)
    fig, axes = plt.subplots(n_r, n_c, figsize=(panel_size * n_c, panel_size * n_r + 0.4), squeeze=False)
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
    fig.tight_layout()
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


def plot_localisation(table: pd.DataFrame):
    """Bars of the energy share and pointing-game hit rate per method (baselines hatched) with
    their 95 % intervals and the chance level (dashed). Returns the Figure."""
    import matplotlib.pyplot as plt

    metrics = [("energy", "energy share inside mask"), ("pointing", "pointing-game hit rate")]
    fig, axes = plt.subplots(1, 2, figsize=(8.2, 3.4), squeeze=False)
    for ax, (metric, title) in zip(axes[0], metrics):
        t = table[table["metric"] == metric].reset_index(drop=True)
        ax.set_title(title, fontsize=10)
        if t.empty:
            ax.text(0.5, 0.5, "no lesion masks", ha="center", va="center", transform=ax.transAxes)
            ax.axis("off")
            continue
        x = np.arange(len(t))
        err = np.vstack([t["mean"] - t["ci_low"], t["ci_high"] - t["mean"]]).astype(float)
        colors = ["tab:blue" if k == "model" else "lightgrey" for k in t["kind"]]
        bars = ax.bar(x, t["mean"].astype(float), yerr=np.nan_to_num(err), color=colors, capsize=3, edgecolor="black")
        for bar, kind in zip(bars, t["kind"]):
            if kind == "baseline":
                bar.set_hatch("//")
        ax.axhline(float(t["chance"].iloc[0]), ls="--", color="black", lw=1, label="chance (random map)")
        ax.set_xticks(x, [init_label(m) for m in t["method"]], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8, loc="upper right")
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
