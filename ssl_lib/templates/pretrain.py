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

from dataclasses import dataclass, field

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
batch_size = None  # per device
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
from ssl_lib.paths import StudyPaths

paths = StudyPaths(output_dir)
slices = SliceStore(store or paths.store("lidc"))
config = pt.get_config("{m}", profile, epochs=epochs, batch_size=batch_size)
pd.Series(vars(config), name="value").to_frame()
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
        ("md", "This run at this profile's size: trainable parameters, wall time and peak memory (GPU memory on a "
               "GPU, the process's peak RSS on a CPU).", "run-size-md"),
        ("code", """
pd.Series({"trainable params (M)": result.trainable_params / 1e6, "wall time (s)": result.wall_time_s,
           "peak memory (MiB)": result.peak_memory_mb, "epochs": result.epochs_done, "steps": result.global_step})
""", "run-size"),
    ]
    return cells


# ----------------------------------------------------------------------------------------------
# The method list: the registry's
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    """What the chapter and the runner read of a method, until ``ssl_lib.pretrain.registry`` exists."""

    name: str
    label: str
    summary: str
    step_cost: float
    paper: dict = field(default_factory=dict)
    preview_note: str = ""

    @property
    def module_class(self):
        from ..pretrain import method_class

        return method_class(self.name)


_BEFORE_REGISTRY = (
    _Spec("byol", "BYOL", "**BYOL** (Grill et al. 2020) trains an *online* network (ResNet, projector, predictor) to "
          "predict the projection that a *target* network -- a slowly moving average of the online one -- gives to "
          "another augmented view of the same slice. No negative pairs are needed. The paper (Supplementary Table 6) "
          "uses two 224 px crops of the 512 px LIDC slices with horizontal flip and Gaussian blur, LARS with lr 1e-3, "
          "weight decay 1.5e-6 and batch 64, for 900 epochs.", 2.4,
          {"table1_note": "The paper's Table 1 lists 70.1 M trainable parameters for BYOL: the Bolts implementation it "
                          "used counts the target network, a full copy of the online network *including the "
                          "predictor* (2 x 35.0 M). Here the target is a momentum copy that is not trained by "
                          "gradients, so it appears under `momentum`."}),
    _Spec("swav", "SwAV", "**SwAV** (Caron et al. 2020) clusters the features of many crops of each slice online: the "
          "scores of the two large crops against 500 learnable prototypes are turned into balanced soft assignments "
          "by a few Sinkhorn-Knopp iterations, and every other crop must predict them (\"swapped prediction\"). The "
          "paper (Supplementary Table 5) uses 2 crops of 224 px (scale 0.9-1) and 6 of 96 px (scale 0.1-0.33) with "
          "Gaussian blur, LARS with lr 0.15, weight decay 1e-6, batch 128, 3 Sinkhorn iterations and prototypes "
          "frozen for the first 313 steps.", 3.0,
          {"table1_note": "The paper's Table 1 lists 24.1 M for SwAV; ours is ResNet50 23.5 M + projector 2048-2048-128 "
                          "4.5 M + 500 prototypes 0.06 M = 28.0 M. We could not reconstruct the paper's count from "
                          "the Bolts model (without the hidden projector layer it would be 23.8 M)."}),
    _Spec("mocov2", "MoCo v2", "**MoCo v2** (Chen et al. 2020) contrasts a *query* view of each slice with a *key* view "
          "made by a momentum copy of the encoder, against a large queue of keys of earlier batches as negatives "
          "(InfoNCE). The paper (Supplementary Table 4) uses two 224 px crops with horizontal flip and Gaussian blur, "
          "SGD with lr 1e-4, momentum 0.9 and batch 64; the queue holds 65,536 keys.", 1.7,
          {"table1_note": "The paper's Table 1 lists 47.6 M for MoCo v2: both encoders counted with Bolts' default "
                          "linear 128-d head (2 x 23.8 M). Ours uses the MoCo v2 MLP head, so each of query and key "
                          "network has 28.0 M; only the query network is trained by gradients."}),
    _Spec("spark", "SparK", "**SparK** (Tian et al. 2023) is a masked autoencoder for convolutional networks: 60 % of "
          "the 32 x 32 patches of each slice are masked, a *sparse* ResNet encodes only the visible patches (masked "
          "positions stay empty through every layer), and a light U-Net decoder fills the holes with learned mask "
          "tokens and reconstructs the masked patches. The paper (Supplementary Table 7) trains on 512 px inputs "
          "with crop and flip, LAMB with cosine annealing to a peak lr of 2.5e-5 and batch 32. SparK trains on its "
          "input size, so here the crop is resized to the input size (512 px in the `paper` profile, 96 px in "
          "`quick`).", 2.6,
          {"table1_note": "The paper's Table 1 lists 25.6 M for SparK: that is the ResNet50 alone as the official "
                          "SparK code counts it (with its 1000-class layer, column `encoder_with_fc`). The paper "
                          "profile trains the official decoder (width 768) and densify layers as well, 29.4 M more, "
                          "so `trainable` is 52.9 M; the `quick` profile's lighter decoder keeps the CPU run short."},
          "## Masked input and reconstruction\n\nFor a few slices: the training crop, the masked input the sparse "
          "encoder sees (masked patches black), the reconstruction, and the reconstruction with the visible patches "
          "pasted back."),
)


def method_specs() -> tuple:
    """The registered pre-training methods in registry order (:func:`ssl_lib.pretrain.registry.methods`)."""
    try:
        from ..pretrain.registry import methods
    except ImportError:  # before the registry: the four methods as their chapters described them
        return _BEFORE_REGISTRY
    return tuple(methods())
