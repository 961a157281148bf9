"""The pre-training chapter, one template function for every registered method.

Wolf et al. 2023 pre-train with four methods; the study has one chapter per method, written from
the method's :class:`~ssl_lib.pretrain.registry.MethodSpec` alone: the title and the loss plot
from its ``label``, the opening paragraph from its ``summary``, the method-specific part of the
"Size (paper Table 1)" section from ``paper["table1_note"]``. Where the method's module draws its
own preview (it overrides :meth:`PretrainModule.preview`, e.g. SparK's masked input and
reconstruction), the preview follows training and uses the trained module, with the spec's
``preview_note`` as its text; otherwise the augmented views are shown before training.

:func:`method_specs` is the registry's method list (``ssl_lib.pretrain.registry.methods``).
"""

from __future__ import annotations

from .writer import Cell

_GREY = """CT slices are grey: each normalised slice is repeated to three channels, as in the paper, so the exported
encoder is a plain torchvision ResNet state dict that loads into `torchvision.models.resnet50()`.
Augmentations run on whole batches of tensors on the training device (`ssl_lib.augment`)."""
_PROFILES = ("Profiles: `smoke` (tests), `quick` (synthetic data, 64 px, ResNet18, a few epochs on a CPU) and `paper` "
             "(ResNet50, the paper's settings, 900 epochs, GPUs; `devices`/`num_nodes` give multi-GPU DDP).")
_PARAMS = """
profile = "quick"
output_dir = "outputs/quick"
store = None  # default: <output_dir>/stores/lidc
epochs = None  # None: the profile's
batch_size = None  # the global batch, split over the devices (None: the profile's)
devices = 1
seed = 0  # the study's seed (also the synthetic data's, notebook 01)
"""
_BROWSE = ("Browse all six slices with the slider (live in JupyterLab; in the book the frames are drawn in "
           "advance).")


def draws_own_preview(spec) -> bool:
    """Whether the method's module overrides the base preview (it shows what the *trained* model makes)."""
    from ..pretrain import PretrainModule

    return getattr(spec.module_class, "preview", None) is not PretrainModule.preview


def pretrain_cells(spec) -> list[Cell]:
    """The cells of the pre-training chapter of ``spec`` (a registered method)."""
    m, label = spec.name, spec.label
    note = (spec.paper or {}).get("table1_note") or (
        f"The paper's Table 1 lists {spec.paper['params_m']} M for {label}." if (spec.paper or {}).get("params_m")
        else "The paper does not list this method.")
    own_preview = draws_own_preview(spec)
    cells: list[Cell] = [
        ("md", f"# Pre-training with {label}\n\n{spec.summary.strip()}\n\n{_GREY}\n\n{_PROFILES}", "title"),
        ("params", _PARAMS, "parameters"),
        ("md", "## Settings\n\nThe profile's settings for this method (the `paper` profile is the paper's "
               "supplementary table).", "settings-md"),
        ("code", f"""
import matplotlib.pyplot as plt
import pandas as pd
from ssl_lib import pretrain as pt
from ssl_lib.data.store import SliceStore
from ssl_lib import present
from ssl_lib.paths import StudyPaths

present.whole_tables()  # tables show every column and whole cells (the book shows them as they are)
paths = StudyPaths(output_dir)
slices = SliceStore(store or paths.store("lidc"))
config = pt.get_config("{m}", profile, epochs=epochs, batch_size=batch_size)
pd.Series({{k: str(v) for k, v in vars(config).items()}}, name="value").to_frame()
""", "settings"),
    ]
    if not own_preview:
        cells += [
            ("md", "## What the network sees\n\nThe augmented views of a few slices, made on the batch tensor "
                   "exactly as in training. Rows are slices, columns the original and its views.", "views-md"),
            ("code", f'views = pt.preview("{m}", slices.read(range(6)), profile=profile)\n'
                     "pt.plot_views(views, range(3));", "views"),
            ("md", _BROWSE, "browse-md"),
            ("code", "pt.view_browser(views)", "browse"),
        ]
    cells += [
        ("md", "## Pre-training\n\n`pretrain` runs Lightning on all slices of the store and writes checkpoints, "
               "the exported encoders with their cards and the metrics under "
               f"`{{output_dir}}/pretrain/{m}/`. An interrupted run continues from its last checkpoint.",
         "pretrain-md"),
        ("code", f"""
result = pt.pretrain("{m}", slices, paths.pretrain("{m}"), profile=profile, epochs=epochs,
                     batch_size=batch_size, devices=devices, seed=seed, progress=False)
result.metrics
""", "pretrain"),
        ("md", "## Loss\n\nThe training loss per step and its mean per epoch.", "loss-md"),
        ("code", f"""
ax = result.steps.plot(x="step", y="loss", alpha=0.4, label="step", figsize=(6, 3))
result.metrics.plot(x="step", y="loss", marker="o", label="epoch mean", ax=ax)
ax.set(title="{label} pre-training loss", xlabel="step", ylabel="loss");
""", "loss"),
    ]
    if own_preview:
        preview_note = getattr(spec, "preview_note", "") or (
            "## What the trained model makes of its input\n\nFor a few slices, the views the trained module draws "
            "from them.")
        cells += [
            ("md", preview_note, "views-md"),
            ("code", "views = pt.preview(result.module, slices.read(range(6)))\npt.plot_views(views, range(3));",
             "views"),
            ("md", _BROWSE, "browse-md"),
            ("code", "pt.view_browser(views)", "browse"),
        ]
    cells += [
        ("md", "## Exported encoders\n\nEach checkpoint epoch exports the encoder (a torchvision state dict without "
               "`fc`) and a card that fine-tuning reads.", "encoders-md"),
        ("code", 'pd.DataFrame([pd.read_json(p.with_suffix(".json"), typ="series") for p in result.encoders])',
         "encoders"),
        ("md", "## Size (paper Table 1)\n\nTrainable parameters at the paper's sizes (ResNet50), in millions, next to "
               f"the paper's count. {note}", "size-md"),
        ("code", f'pt.param_table("paper", methods=["{m}"])', "size"),
        ("md", "This run at this profile's size beside the paper's Table 1 (ResNet50, 900 epochs on one RTX 3090): "
               "trainable parameters, peak memory (GPU memory on a GPU, the process's peak RSS on a CPU) and "
               "wall time.", "run-size-md"),
        ("code", f'pt.run_size(result, "{m}")', "run-size"),
    ]
    return cells


def method_specs() -> tuple:
    """The registered pre-training methods in registry order (:func:`ssl_lib.pretrain.registry.methods`)."""
    from ..pretrain.registry import methods

    return tuple(methods())
