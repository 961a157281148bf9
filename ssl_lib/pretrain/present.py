"""Pictures and tables of pre-training for the notebooks: the views a method trains on, the parameter table.

:func:`preview` makes the views of a few slices exactly as training does (and, for a trained
SparK module, the masked input and the reconstruction); :func:`plot_views` draws them,
:func:`view_browser` browses them (ipywidgets in JupyterLab, pre-drawn frames in the book);
:func:`param_table` counts parameters at a profile's sizes next to the paper's Table 1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .base import PretrainError, PretrainModule
from .registry import build_module, get_method, method_names
from .run import count_parameters

__all__ = ["param_table", "plot_views", "preview", "run_size", "view_browser"]


def param_table(profile: str = "paper", methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Parameters per method at ``profile`` sizes next to the paper's Table 1 (millions).

    Columns: ``trainable`` (what the optimiser updates), ``momentum`` (EMA target/key copies,
    not trained by gradients), ``total``, ``encoder`` (the exported ResNet) and ``paper``.
    The paper's counts are Lightning's "trainable params" of the Bolts models, in which BYOL's
    target network is a full copy of the online network *including the predictor* and is
    counted (2 x 35.0 M = 70.1 M; ours counts it under ``momentum``: 35.0 + 33.0 M), and MoCo v2
    is Bolts' default with a linear 128-d head and both encoders counted (2 x 23.8 M = 47.6 M;
    ours has the MoCo v2 MLP head, 28.0 M trainable + 28.0 M key copy). SwAV differs by its
    head. SparK's 25.6 M is the ResNet-50 *alone*, as official SparK lists it (timm's count with
    the 1000-class ImageNet fc: column ``encoder_with_fc``, 23.5 M + 2.05 M), not the model it
    trains: the official decoder and densify layers add 29.4 M (``trainable`` 52.9 M).
    """
    rows = []
    methods = method_names() if methods is None else methods
    for method in methods:
        module = build_module(method, profile)
        c = count_parameters(module)
        width = module.encoder.layer4[-1].conv1.in_channels if hasattr(module.encoder, "layer4") else 0
        rows.append({"method": method, "arch": module.cfg.arch, **{k: v / 1e6 for k, v in c.items()},
                     "encoder_with_fc": (c["encoder"] + width * 1000 + 1000) / 1e6,
                     "paper": get_method(method).paper.get("params_m", np.nan)})
        del module
    return pd.DataFrame(rows).set_index("method").round(2)


def run_size(result, method: str) -> pd.DataFrame:
    """One pre-training run's size beside the paper's Table 1 (one RTX 3090, ResNet-50, 900 epochs).

    ``result``: a :class:`~ssl_lib.pretrain.run.PretrainResult`. Rows: trainable parameters (M),
    peak memory (GB: GPU memory on a GPU, the process's peak RSS on a CPU), wall time (hours),
    epochs and steps; columns ``this run`` and ``paper (Table 1)`` (formatted text: no raw
    pandas dtypes on the page).
    """
    paper = get_method(method).paper
    rows = [("trainable parameters (M)", f"{result.trainable_params / 1e6:.1f}", paper.get("params_m")),
            ("peak memory (GB)", f"{result.peak_memory_mb / 1024:.2f}", paper.get("gpu_memory_gb")),
            ("wall time (h)", f"{result.wall_time_s / 3600:.3f}", paper.get("hours")),
            ("epochs", f"{result.epochs_done}", 900),
            ("steps", f"{result.global_step}", None)]
    return pd.DataFrame({"this run": [r[1] for r in rows],
                         "paper (Table 1)": ["—" if r[2] is None else f"{r[2]:g}" for r in rows]},
                        index=pd.Index([r[0] for r in rows], name="quantity"))


def preview(method_or_module: str | PretrainModule, images: torch.Tensor | np.ndarray, *, profile: str = "quick",
            seed: int = 0) -> dict[str, torch.Tensor]:
    """The views a method trains on, for a few slices: ``{name: (B, 1, h, w) in [0, 1]}``.

    ``images``: uint8 ``(B, H, W)`` or ``(B, 1, H, W)`` (e.g. ``store.read([0, 1, 2])``). With a
    trained SparK module (:func:`load_module`) the dict also holds the masked input and the
    reconstruction.
    """
    module = build_module(method_or_module, profile) if isinstance(method_or_module, str) else method_or_module
    t = torch.as_tensor(np.asarray(images))
    if t.ndim == 3:
        t = t[:, None]
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[1] != 1:
        raise PretrainError(f"preview expects uint8 slices (B, H, W), got {t.dtype} {tuple(t.shape)}")
    was_training = module.training
    module.eval()
    try:
        return module.preview(t, seed=seed)
    finally:
        module.train(was_training)


def plot_views(views: dict[str, torch.Tensor], samples: Sequence[int] | None = None, *, size: float = 1.6):
    """A static figure: one row per sample, one column per view."""
    import matplotlib.pyplot as plt

    names = list(views)
    n = next(iter(views.values())).shape[0]
    samples = list(range(min(n, 4))) if samples is None else list(samples)
    size = min(size, 8.2 / len(names))  # at most the book's text column wide (SwAV has many crops)
    fig, axes = plt.subplots(len(samples), len(names), figsize=(size * len(names), size * len(samples)),
                             squeeze=False)
    for r, i in enumerate(samples):
        for c, name in enumerate(names):
            ax = axes[r][c]
            ax.imshow(views[name][i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    fig.tight_layout()
    return fig


def view_browser(views: dict[str, torch.Tensor]):
    """A slider over the samples, each drawn by :func:`plot_views`: ipywidgets in JupyterLab; in a
    batch run (the book) a :func:`ssl_lib.viewer.frame_viewer` of the same figures."""
    from ..viewer import frame_viewer
    from ..widgets import batch_run

    n = next(iter(views.values())).shape[0]
    if batch_run():
        return frame_viewer(lambda i: plot_views(views, [i]), [("slice", [str(i) for i in range(n)])], slider=[True])
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(sample: int = 0):
        fig = plot_views(views, [sample])
        plt.show()
        plt.close(fig)

    return widgets.interactive(show, sample=widgets.IntSlider(min=0, max=n - 1, step=1, value=0,
                                                                description="slice"))
