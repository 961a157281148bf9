"""Where the fine-tuned models look: Grad-CAM heat maps, their agreement, their localisation.

Wolf et al. 2023 (Results, Figure 4) apply Grad-CAM (Selvaraju et al. 2017, through the
``pytorch-grad-cam`` library) to the COVID-19 test images with the fine-tuned ResNet50 of each
pre-training method, show two positive and two negative examples (input, then one heat-map
overlay per method) and compare the methods by the Pearson correlation of two methods' heat maps
of the same image, averaged over the test set (they report means of 0.02-0.07).

This module does that and adds what the paper leaves out:

- :func:`gradcam_maps`: Grad-CAM of one model at its last ResNet stage (``model.target_layer``
  = ``backbone.layer4[-1]``; the profiles may choose another stage and enlarge small images
  first, see :func:`ssl_lib.profiles.explain_profile`) for a batch of images; float32 ``(N, H, W)`` in ``[0, 1]`` at the
  input's size (``pytorch_grad_cam`` min-max scales each map; an all-zero map stays zero).
- :func:`gradcam_for_inits`: the maps of every initialisation's fine-tuned model on the same
  test images, cached as ``StudyPaths.gradcam / f"{task}_f{fraction}_s{seed}.npz"``
  (:class:`HeatMaps`); with the profile's other explanation methods on the same models
  (Grad-CAM++, LayerCAM, HiResCAM at the same layer, occlusion sensitivity on a subset:
  :mod:`ssl_lib.explainers`) and, for chest tasks, lung masks (:mod:`ssl_lib.lung_mask`).
- :func:`run_gradcam`: both, plus the statistics of the maps (:mod:`ssl_lib.heatmap_stats`,
  re-exported here): :func:`correlation_table` (per-image Pearson r for every pair of inits,
  with a bootstrap 95 % interval), :func:`explanation_table` (for every explanation method:
  energy share inside the lesion mask and pointing game, beside image-blind baselines; the same
  for the lung, the paper's claim) and :func:`agreement_table` (each gradient map against
  occlusion).

The models are found by the results layer's names (:func:`ssl_lib.runs.run_file`, as fine-tuning
wrote them) in the task's store (:func:`ssl_lib.tasks.task_store_path`, as fine-tuning read it).
Figures and the heat-map browser are in :mod:`ssl_lib.explain_figures`.

Shapes: images uint8 ``(N, H, W)``; masks uint8 ``(N, H, W)`` (1 = lesion); maps float32
``(N, H, W)``; labels int ``(N,)``.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from . import runs
from .atomic import atomic_path
from .data.store import SliceStore, normalize_batch
from .explainers import cam_maps
from .heatmap_stats import (AGREEMENT_COLUMNS, SCORE_COLUMNS, ExplainError, agreement_table,  # noqa: F401
                            bootstrap_mean, centre_gaussian_maps, correlation_matrix, correlation_table,
                            dilate_masks, energy_share, explanation_table, localisation_table, n_constant,
                            pearson_per_image, pointing_hits, uniform_random_maps)
from .paths import StudyPaths
from .profiles import PROFILE_NAMES, ExplainProfile, explain_profile
from .pretrain.registry import init_label as _registry_label
from .pretrain.registry import init_order, order_inits
from .tasks import fold_of, task_splits, task_store_path, use_study_tasks

#: The initialisations every study has, in display order ("random" = no pre-training), from the method
#: registry. Which models a study explains comes from the study (:func:`study_inits`: those fine-tuning
#: saved, ImageNet among them when the study was given its weights).
INITS = init_order()
#: Labels of the image-blind baseline maps (the inits' labels come from the registry).
LABELS = {"uniform-random": "uniform random", "centre-gaussian": "centre Gaussian"}
#: What Grad-CAM explains: the finding (class 1), the true class, or the predicted class.
TARGET_MODES = ("auto", "positive", "true", "predicted")
BASELINES = ("uniform-random", "centre-gaussian")


STAGES = ("layer1", "layer2", "layer3", "layer4")


def init_label(init: str) -> str:
    """The display label of an init (or a baseline map) in tables and figures."""
    return LABELS[init] if init in LABELS else _registry_label(init)


# ----------------------------------------------------------------------------------------------
# Grad-CAM of one model


def _as_input(images, mean: float | None, std: float | None) -> torch.Tensor:
    """uint8 (N,H,W)/(N,1,H,W) -> normalised float (N,3,H,W); float (N,1|3,H,W) passes through."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dtype == torch.uint8:
        if mean is None or std is None:
            raise ExplainError("uint8 images need the model's normalisation: pass mean= and std=")
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != 1:
            raise ExplainError(f"uint8 images must be (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}")
        return normalize_batch(x, mean, std).contiguous()
    if not torch.is_floating_point(x) or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ExplainError(f"images must be uint8 (N, H, W) or normalised float (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
    return x.float().expand(-1, 3, -1, -1).contiguous()


def _resolve_targets(targets, n: int, num_classes: int) -> np.ndarray | None:
    """``None`` -> class 1 for binary models, else predicted; int -> all; array -> per image;
    ``"predicted"`` -> None (decided from the logits)."""
    if targets is None:
        return np.ones(n, np.int64) if num_classes == 2 else None
    if isinstance(targets, str):
        if targets != "predicted":
            raise ExplainError(f"targets must be None, a class index, per-image classes or 'predicted', got {targets!r}")
        return None
    t = np.asarray(targets, dtype=np.int64)
    t = np.full(n, int(t), np.int64) if t.ndim == 0 else t
    if t.shape != (n,):
        raise ExplainError(f"targets: expected {n} per-image classes, got shape {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ExplainError(f"targets: class indices must lie in [0, {num_classes}), got {t.min()}..{t.max()}")
    return t


@contextmanager
def _grad_only_in(model: torch.nn.Module, layer: torch.nn.Module):
    """Only ``layer``'s parameters require grad while inside: the backward pass then stops at the
    target layer (Grad-CAM needs d score / d activations there, nothing earlier), which is about
    3x cheaper than a full backward and leaves the maps unchanged. Flags are restored on exit."""
    keep = {id(p) for p in layer.parameters()}
    if not keep:  # a parameter-free target layer needs gradients from earlier layers
        yield
        return
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _explain(model, images, targets=None, *, mean=None, std=None, batch_size=32, target_layer=None,
             device=None, progress=False, methods: Sequence[str] = ("gradcam",)):
    """The class activation maps ``methods`` (:data:`ssl_lib.explainers.CAM_NAMES`; one forward and
    backward pass per batch serves them all) plus, per image, the explained class, its softmax
    probability and the predicted class: ``({method: maps (N,H,W) float32}, target (N,), prob (N,),
    pred (N,))``."""
    x = _as_input(images, mean, std)
    n = len(x)
    num_classes = int(getattr(model, "num_classes", 0) or model(x[:1]).shape[1])
    fixed = _resolve_targets(targets, n, num_classes)
    methods = list(methods)
    if device is not None:
        model = model.to(device)
    layer = target_layer if target_layer is not None else getattr(model, "target_layer", None)
    if layer is None:
        layer = model.backbone.layer4[-1]
    maps = {m: np.zeros((n, *x.shape[-2:]), np.float32) for m in methods}
    tgt, prob, pred = np.zeros(n, np.int64), np.zeros(n, np.float32), np.zeros(n, np.int64)
    if n == 0:
        return maps, tgt, prob, pred
    was_training = model.training  # the CAMs switch the model to eval mode; restored below
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="Grad-CAM", unit="batch")
    try:
        with torch.enable_grad(), _grad_only_in(model, layer):
            for s in starts:
                xb = x[s:s + batch_size]
                tb = None if fixed is None else fixed[s:s + len(xb)]
                out, logits = cam_maps(model, xb, tb, layer, methods)  # the whole batch in one pass
                pb = logits.argmax(1).numpy()
                tb_idx = pb if tb is None else tb
                for m in methods:
                    maps[m][s:s + len(xb)] = out[m]
                tgt[s:s + len(xb)], pred[s:s + len(xb)] = tb_idx, pb
                prob[s:s + len(xb)] = logits.softmax(1)[torch.arange(len(xb)), torch.as_tensor(tb_idx)].numpy()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return maps, tgt, prob, pred


def _native_check(model, images, labels, targets, mean, std, batch_size, device) -> dict:
    """Accuracy and mean probability of the explained classes ``targets`` on ``images`` at the
    size the model was fine-tuned at (Grad-CAM then reads the enlarged images): how far the
    enlargement moves the model's output. ``images`` uint8 ``(N, H, W)``."""
    x = _as_input(images, mean, std)
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(x[s:s + batch_size].to(device)).float().cpu() for s in range(0, len(x), batch_size)])
    prob = logits.softmax(1)[torch.arange(len(x)), torch.as_tensor(targets)].numpy()
    return {"accuracy": float(np.mean(logits.argmax(1).numpy() == labels)), "mean_prob_target": float(prob.mean())}


def gradcam_maps(model: torch.nn.Module, images, targets=None, *, mean: float | None = None,
                 std: float | None = None, batch_size: int = 32, target_layer: torch.nn.Module | None = None,
                 device: str | torch.device | None = None, progress: bool = False) -> np.ndarray:
    """Grad-CAM heat maps of ``model`` (a :class:`~ssl_lib.models.classifier.Classifier`).

    ``images``: uint8 ``(N, H, W)`` or ``(N, 1, H, W)`` slices (normalised here with ``mean``/
    ``std``, the values the model was fine-tuned with) or an already normalised float
    ``(N, 3, H, W)`` tensor. ``targets``: the class to explain — ``None``: class 1 (the finding)
    for a two-class model, the predicted class otherwise; an ``int`` for all images; per-image
    classes ``(N,)`` (e.g. the true labels); or ``"predicted"``. ``target_layer`` defaults to
    ``model.target_layer`` (the last block of ``layer4``). Each batch of ``batch_size`` images
    goes through ``pytorch_grad_cam.GradCAM`` in one call.

    Returns float32 ``(N, H, W)`` in ``[0, 1]`` (each map min-max scaled; a map with no positive
    evidence is all zero), deterministic for a given model and image on the CPU.
    """
    return _explain(model, images, targets, mean=mean, std=std, batch_size=batch_size,
                    target_layer=target_layer, device=device, progress=progress)[0]["gradcam"]


# ----------------------------------------------------------------------------------------------
# Heat maps of every initialisation on the same test images


@dataclass
class HeatMaps:
    """Heat maps of several fine-tuned models on the same images: Grad-CAM and the other
    explanation methods (:mod:`ssl_lib.explainers`).

    ``images`` uint8 ``(N, H, W)``; ``labels`` int ``(N,)``; ``masks`` uint8 ``(N, H, W)`` or
    ``None``; ``maps``: init -> Grad-CAM float32 ``(N, H, W)``; ``indices``: store indices ``(N,)``;
    ``targets``/``probs``/``preds``: init -> ``(N,)`` explained class, its softmax probability,
    predicted class. ``other``: explainer -> init -> float32 ``(n_k, H, W)``, the maps of the other
    methods on the images at ``positions[explainer]`` (positions into ``images``, ``(n_k,)``; all
    images where absent); ``lungs``: bool ``(N, H, W)`` lung masks (:mod:`ssl_lib.lung_mask`) or ``None``.
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    maps: dict[str, np.ndarray]
    indices: np.ndarray
    task: str = ""
    class_names: list[str] = field(default_factory=list)
    task_kind: str = "binary"
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    preds: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    other: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    positions: dict[str, np.ndarray] = field(default_factory=dict)
    lungs: np.ndarray | None = None

    @property
    def inits(self) -> list[str]:
        return list(self.maps)

    @property
    def explainers(self) -> list[str]:
        """The explanation methods held: Grad-CAM first, then the others in the order computed."""
        return ["gradcam", *[e for e in self.other if e != "gradcam"]]

    def maps_of(self, explainer: str) -> dict[str, np.ndarray]:
        """init -> maps of ``explainer`` (``"gradcam"``: :attr:`maps`), on :meth:`positions_of` images."""
        if explainer == "gradcam":
            return self.maps
        if explainer not in self.other:
            raise ExplainError(f"no {explainer!r} maps here; held: {self.explainers}")
        return self.other[explainer]

    def positions_of(self, explainer: str) -> np.ndarray:
        """Positions (into :attr:`images`) of the images ``explainer`` explained, ``(n_k,)``."""
        pos = self.positions.get(explainer)
        return np.arange(len(self.images)) if pos is None else np.asarray(pos, np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (f"HeatMaps(task={self.task!r}, n={len(self)}, size={self.images.shape[1:]}, "
                f"inits={self.inits}, explainers={self.explainers}, masks={self.masks is not None}, "
                f"lungs={self.lungs is not None})")

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def summary(self) -> pd.DataFrame:
        """Per method: images, accuracy, mean probability of the explained class, constant maps.

        When the images were enlarged for Grad-CAM, also the accuracy and mean probability at the
        size ``S`` the models were fine-tuned at (``accuracy_{S}px``, ``prob_target_{S}px``):
        where the two differ, the maps explain a model that sees other input than it was trained on."""
        rows = []
        native = self.meta.get("native", {})
        for init, m in self.maps.items():
            row = {
                "method": init_label(init), "n": len(m),
                "accuracy": float(np.mean(self.preds[init] == self.labels)) if init in self.preds and len(m) else np.nan,
                "mean_prob_target": float(np.mean(self.probs[init])) if init in self.probs and len(m) else np.nan,
                "constant_maps": n_constant(m),
            }
            if native:
                size = self.meta.get("fine_tuned_size", "?")
                row[f"accuracy_{size}px"] = native.get(init, {}).get("accuracy", np.nan)
                row[f"prob_target_{size}px"] = native.get(init, {}).get("mean_prob_target", np.nan)
            rows.append(row)
        return pd.DataFrame(rows)

    # -- cache ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write a compressed ``.npz`` atomically: Grad-CAM maps as ``map__<init>``, the other
        methods' as ``xmap__<explainer>__<init>`` with their positions ``xpos__<explainer>``, lung
        masks as ``lungs``, meta as JSON."""
        path = Path(path)
        arrays = {"images": self.images, "labels": self.labels, "indices": self.indices}
        if self.masks is not None:
            arrays["masks"] = self.masks
        if self.lungs is not None:
            arrays["lungs"] = np.asarray(self.lungs, bool)
        for name, by_init in self.other.items():
            if name in self.positions:
                arrays[f"xpos__{name}"] = np.asarray(self.positions[name], np.int64)
            for init, m in by_init.items():
                arrays[f"xmap__{name}__{init}"] = m
        for init in self.inits:
            arrays[f"map__{init}"] = self.maps[init]
            for key, d in (("target", self.targets), ("prob", self.probs), ("pred", self.preds)):
                if init in d:
                    arrays[f"{key}__{init}"] = d[init]
        meta = {"task": self.task, "class_names": self.class_names, "task_kind": self.task_kind,
                "inits": self.inits, "other": list(self.other), **self.meta}
        arrays["meta"] = np.array(json.dumps(meta))
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no suffix
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeatMaps":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                inits = meta.pop("inits")
                names = meta.pop("other", [])
                get = lambda key: {i: z[f"{key}__{i}"] for i in inits if f"{key}__{i}" in z.files}  # noqa: E731
                return cls(images=z["images"], labels=z["labels"], masks=z["masks"] if "masks" in z.files else None,
                           maps=get("map"), indices=z["indices"], task=meta.pop("task"),
                           class_names=meta.pop("class_names"), task_kind=meta.pop("task_kind"),
                           targets=get("target"), probs=get("prob"), preds=get("pred"), meta=meta,
                           other={e: get(f"xmap__{e}") for e in names},
                           positions={e: z[f"xpos__{e}"] for e in names if f"xpos__{e}" in z.files},
                           lungs=z["lungs"] if "lungs" in z.files else None)
        except (OSError, KeyError, ValueError) as err:
            raise ExplainError(f"{path}: not a readable heat-map cache ({err})") from None


def model_path(output_dir: str | os.PathLike, task: str, init: str, fraction: float = 1.0, seed: int = 0,
               fold: int = -1) -> Path:
    """Where fine-tuning saved the model of (task, init, fraction, seed[, CV fold]): :func:`ssl_lib.runs.run_file`."""
    return runs.run_file(output_dir, "models", task, init, fraction, seed, fold)


def study_inits(output_dir: str | os.PathLike, task: str, fraction: float = 1.0, seed: int = 0,
                fold: int = -1) -> list[str]:
    """The inits whose fine-tuned model of (task, fraction, seed[, fold]) the study saved, in display
    order (:func:`ssl_lib.pretrain.registry.order_inits`): what fine-tuning ran, not a list fixed at import."""
    folder = StudyPaths(output_dir).finetune / "models" / task
    found = [d.name for d in folder.iterdir() if d.is_dir()] if folder.is_dir() else []
    return order_inits(i for i in found if model_path(output_dir, task, i, fraction, seed, fold).is_file())


def cache_path(output_dir: str | os.PathLike, task: str, fraction: float = 1.0, seed: int = 0, fold: int = -1) -> Path:
    """The heat-map cache of the models of (task, fraction, seed[, fold]): ``gradcam/<task>_<run name>.npz``."""
    return StudyPaths(output_dir).gradcam / f"{task}_{runs.run_name(fraction, seed, fold)}.npz"


def explained_tasks(output_dir: str | os.PathLike) -> list[str]:
    """The tasks whose heat maps a study has computed (from the names of :func:`cache_path`'s tables)."""
    pattern = re.compile(r"^(?P<task>.+)_f[0-9.]+_s\d+(?:_k\d+)?_correlation\.csv$")
    found = (pattern.match(p.name) for p in sorted(StudyPaths(output_dir).gradcam.glob("*_correlation.csv")))
    return list(dict.fromkeys(m.group("task") for m in found if m))


def select_indices(store: SliceStore, split: str = "test", max_images: int | None = None, seed: int = 0,
                   candidates: Sequence[int] | None = None) -> np.ndarray:
    """Labelled store indices of ``split`` (or of ``candidates``); at most ``max_images`` of them,
    a seeded random subset kept in store order and stratified by label (each class keeps its share)."""
    idx = store.split_indices(split) if candidates is None else np.asarray(candidates, np.int64)
    idx = idx[store.labels[idx] >= 0]
    if max_images is None or len(idx) <= max_images:
        return idx
    rng = np.random.default_rng(seed)
    labels = store.labels[idx]
    keep = []
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts / counts.sum() * max_images).astype(int)
    quota[np.argsort(-(counts / counts.sum() * max_images - quota))[: max_images - quota.sum()]] += 1
    for c, q in zip(classes, quota):
        members = idx[labels == c]
        keep.append(rng.choice(members, size=min(q, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def _signature(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_mtime_ns), int(st.st_size)]


@dataclass(frozen=True)
class Occlusion:
    """How occlusion sensitivity is run (:func:`ssl_lib.explainers.occlusion_maps`): a ``size`` x
    ``size`` px square of grey value ``fill`` (0-255, as stored: 0 is the darkest value of the
    slice's window) moved in steps of ``stride`` px, on at most ``max_images`` of the explained
    images (a seeded subset, store order), on the finding's images only (``on="positive"``, binary
    tasks) or on all (``"all"``)."""

    size: int
    stride: int
    fill: int = 0
    max_images: int | None = None
    on: str = "positive"

    def as_meta(self) -> dict:
        return {"size": int(self.size), "stride": int(self.stride), "fill": int(self.fill),
                "max_images": self.max_images, "on": self.on}


def occlusion_subset(labels: np.ndarray, task_kind: str, occ: Occlusion, seed: int = 0) -> np.ndarray:
    """Positions of the images occlusion explains: the finding's images (label 1) of a binary task
    when ``occ.on == "positive"``, else all; at most ``occ.max_images``, a seeded random subset in
    order. int64 ``(n_k,)``."""
    if occ.on not in ("positive", "all"):
        raise ExplainError(f"occlusion 'on' must be 'positive' or 'all', got {occ.on!r}")
    labels = np.asarray(labels)
    pos = np.flatnonzero(labels == 1) if occ.on == "positive" and task_kind == "binary" else np.arange(len(labels))
    if occ.max_images is not None and len(pos) > occ.max_images:
        pos = np.sort(np.random.default_rng(seed).choice(pos, size=occ.max_images, replace=False))
    return pos.astype(np.int64)


def gradcam_for_inits(output_dir: str | os.PathLike, task: str, fraction: float = 1.0, seed: int = 0,
                      indices: Sequence[int] | None = None, inits: Sequence[str] | None = None, *,
                      target: str = "auto", split: str = "test", max_images: int | None = None,
                      batch_size: int = 32, device: str | torch.device | None = None,
                      fold: int = -1, use_cache: bool = True, input_size: int | None = None,
                      stage: str = "layer4", progress: bool = False, explainers: Sequence[str] = ("gradcam",),
                      occlusion: Occlusion | None = None, lung: bool = False) -> HeatMaps:
    """Grad-CAM maps (and those of the other ``explainers``) of each init's fine-tuned model on the
    same ``task`` test images.

    Models: ``model_path(output_dir, task, init, fraction, seed, fold)``; ``inits=None`` takes
    every one fine-tuning saved (:func:`study_inits`; an explicitly named init that is missing is an error).
    Images: ``indices`` (store indices) or the ``split`` (at most ``max_images``, see
    :func:`select_indices`); for a cross-validated task (``fold >= 0``, the Brain task) the test
    fold of :func:`ssl_lib.tasks.task_splits` instead of ``split``. ``target``: ``"auto"`` (the
    finding, class 1, for binary tasks; the true class otherwise), ``"positive"``, ``"true"`` or
    ``"predicted"``. Each model is run with the mean/std it was fine-tuned with (its saved info;
    the store's as a fallback). ``input_size``: images smaller than this are enlarged (bilinear;
    masks nearest) before Grad-CAM; ``stage``: the ResNet stage (``layer1`` ... ``layer4``) whose
    last block is the target layer of every class activation map.

    ``explainers``: names of :data:`ssl_lib.explainers.EXPLAINERS` (Grad-CAM always included); the
    class activation maps share one backward pass per batch; ``"occlusion"`` needs ``occlusion``
    (its square, stride, fill and images, :class:`Occlusion`) and explains the class Grad-CAM
    explains. ``lung``: also derive lung masks (:func:`ssl_lib.lung_mask.lung_masks`, plus the
    lesion masks where they exist) for the paper's claim that the maps lie in the lung.

    Cached in ``cache_path(...)`` (one file per task, fraction, seed, fold: the last call wins); the
    cache is reused only if it was made from the same models (file time and size), images, inits,
    target, explainers, occlusion settings and lung-mask version. ``use_cache=False`` neither reads
    nor writes it.
    """
    from .explainers import get_explainer, occlusion_maps
    from .lung_mask import LUNG_MASK_VERSION, lung_masks, with_lesions
    from .models.classifier import load_classifier

    if target not in TARGET_MODES:
        raise ExplainError(f"target must be one of {TARGET_MODES}, got {target!r}")
    if stage not in STAGES:
        raise ExplainError(f"stage must be one of {STAGES}, got {stage!r}")
    explainers = list(dict.fromkeys(["gradcam", *explainers]))
    kinds = {e: get_explainer(e).kind for e in explainers}
    cams = [e for e in explainers if kinds[e] == "cam"]
    if "occlusion" in explainers and occlusion is None:
        raise ExplainError("explainer 'occlusion' needs its settings: pass occlusion=Occlusion(size, stride, ...)")
    unknown = [e for e in explainers if kinds[e] != "cam" and e != "occlusion"]
    if unknown:
        raise ExplainError(f"explainers {unknown}: the Grad-CAM step runs class activation maps and occlusion only")
    use_study_tasks(output_dir)  # a user task's store name is known from here
    paths = StudyPaths(output_dir)
    store_dir = task_store_path(output_dir, task)
    try:
        store = SliceStore(store_dir)
    except FileNotFoundError as err:
        raise ExplainError(f"{store_dir}: cannot open the {task!r} store ({err})") from None
    kind = store.meta.get("task", "binary")
    if target == "auto":
        target = "positive" if kind == "binary" else "true"
    if target == "positive" and store.num_classes not in (0, 2):
        raise ExplainError(f"{store_dir}: target='positive' needs a binary task, this one has {store.num_classes} classes")

    if inits is None:
        inits = study_inits(output_dir, task, fraction, seed, fold)
        if not inits:
            raise ExplainError(f"{paths.finetune / 'models' / task}: no fine-tuned model "
                               f"{model_path(output_dir, task, 'random', fraction, seed, fold).name} for any "
                               f"initialisation; run fine-tuning first "
                               "(cross-validated tasks: pass the fold)")
    files = {i: model_path(output_dir, task, i, fraction, seed, fold) for i in inits}
    for i, f in files.items():
        if not f.is_file():
            raise ExplainError(f"{f}: no fine-tuned model for init {i!r}; run fine-tuning first")

    if indices is not None:
        idx = np.asarray(indices, np.int64)
        n_available = len(idx)
    else:
        candidates = (task_splits(store, task, seed, fold=fold).test if fold is not None and fold >= 0
                      else store.split_indices(split))
        n_available = int((store.labels[np.asarray(candidates, np.int64)] >= 0).sum())
        idx = select_indices(store, max_images=max_images, seed=seed, candidates=candidates)
    if len(idx) == 0:
        raise ExplainError(f"{store_dir}: no images to explain in split {split!r}")
    enlarged = input_size is not None and store.image_size < input_size
    meta = {"fraction": float(fraction), "seed": int(seed), "fold": int(fold), "target": target,
            "models": {i: _signature(f) for i, f in files.items()}, "input_size": input_size, "stage": stage,
            "fine_tuned_size": store.image_size if enlarged else None, "explainers": explainers,
            "occlusion": occlusion.as_meta() if "occlusion" in explainers else None,
            "lung_mask": LUNG_MASK_VERSION if lung else None, "n_available": n_available,
            "split": "fold" if fold is not None and fold >= 0 and indices is None else split}
    cache = cache_path(output_dir, task, fraction, seed, fold)
    if use_cache and cache.is_file():
        try:
            old = HeatMaps.load(cache)
            if old.inits == list(inits) and np.array_equal(old.indices, idx) and all(
                    old.meta.get(k) == v for k, v in meta.items()):
                return old
        except ExplainError:
            pass

    images = store.read(idx)
    labels = store.labels[idx].astype(np.int64)
    masks = None
    if store.masks is not None:
        order = np.argsort(idx, kind="stable")
        masks = np.empty_like(images)
        masks[order] = store.masks[idx[order]]
    native = None
    if enlarged:
        native = images  # the models were fine-tuned at the stored size: their predictions there, for comparison
        images, masks = enlarge(images, input_size), None if masks is None else enlarge(masks, input_size, nearest=True)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    heat = HeatMaps(images=images, labels=labels, masks=masks, maps={}, indices=idx, task=task,
                    class_names=store.class_names, task_kind=kind, meta=meta,
                    lungs=with_lesions(lung_masks(images), masks) if lung else None)
    occ_pos = occlusion_subset(labels, kind, occlusion, seed) if "occlusion" in explainers else None
    if occ_pos is not None:
        heat.positions["occlusion"] = occ_pos
    for init, f in files.items():
        model, info = load_classifier(f, map_location=device)
        mean, std = float(info.get("mean", store.mean)), float(info.get("std", store.std))
        tmode = {"positive": 1, "true": labels, "predicted": "predicted"}[target]
        m, t, p, pr = _explain(model, images, tmode, mean=mean, std=std, batch_size=batch_size,
                               target_layer=getattr(model.backbone, stage)[-1], device=device, progress=progress,
                               methods=cams)
        heat.maps[init], heat.targets[init], heat.probs[init], heat.preds[init] = m.pop("gradcam"), t, p, pr
        for name, maps in m.items():
            heat.other.setdefault(name, {})[init] = maps
        if occ_pos is not None:
            fill = (occlusion.fill / 255.0 - mean) / std  # the grey value in the model's normalised units
            heat.other.setdefault("occlusion", {})[init] = occlusion_maps(
                model, _as_input(images[occ_pos], mean, std), t[occ_pos], size=occlusion.size,
                stride=occlusion.stride, fill=fill, batch_size=max(batch_size, 64))
        if native is not None:
            heat.meta.setdefault("native", {})[init] = _native_check(model, native, labels, t, mean, std, batch_size,
                                                                     device)
    if use_cache:
        heat.save(cache)
    return heat


def enlarge(images: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """uint8 ``(N, H, W)`` resized to ``(N, size, size)`` (bilinear, or nearest for masks)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()[:, None]
    mode = {"mode": "nearest"} if nearest else {"mode": "bilinear", "align_corners": False}
    y = torch.nn.functional.interpolate(x, size=(size, size), **mode)
    return y[:, 0].round_().clamp_(0, 255).to(torch.uint8).numpy()


def dropped_maps(heat: HeatMaps) -> pd.DataFrame:
    """Maps the correlation and localisation analyses leave out, per explanation method and init,
    and why.

    A constant map (no positive evidence for the explained class: an all-zero CAM after its ReLU,
    or an occlusion map where no square lowered the probability) has no defined correlation and no
    energy to place; columns: explainer, method, n, constant, share, reason.
    """
    from .explainers import explainer_label

    rows = []
    for name in heat.explainers:
        what = "no square lowered its probability" if name == "occlusion" else "no positive gradient evidence"
        for init, m in heat.maps_of(name).items():
            n_const = n_constant(m)
            rows.append({"explainer": explainer_label(name), "method": init_label(init), "n": len(m),
                         "constant": n_const, "share": n_const / len(m) if len(m) else np.nan,
                         "reason": f"constant map: {what} for the explained class"})
    return pd.DataFrame(rows, columns=["explainer", "method", "n", "constant", "share", "reason"])


# ----------------------------------------------------------------------------------------------
# One call for the notebook / study runner


@dataclass
class GradCamResult:
    """What :func:`run_gradcam` computed: the maps, the correlation between inits (Grad-CAM), the
    long localisation table of every explanation method (lesion and lung,
    :func:`ssl_lib.heatmap_stats.explanation_table`) and the agreement of each gradient map with
    occlusion (:func:`ssl_lib.heatmap_stats.agreement_table`), and the files written."""

    heat: HeatMaps
    correlation: pd.DataFrame
    localisation: pd.DataFrame
    files: dict[str, Path]
    agreement: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=AGREEMENT_COLUMNS))

    @property
    def dropped(self) -> pd.DataFrame:
        """Maps left out of the correlation and localisation, per method, and why (:func:`dropped_maps`)."""
        return dropped_maps(self.heat)


def lung_task(task: str) -> bool:
    """Whether the lung is scored for ``task`` by default: the paper's claim is about the COVID-19
    chest CT slices, so the ``covid`` task and user tasks read with the COVID-CT reader; any other
    task when asked (``run_gradcam(..., lung=True)``, the chapter's ``lung`` parameter)."""
    if task == "covid":
        return True
    from .tasks import get_task

    try:
        return get_task(task).reader == "covid"
    except (KeyError, ValueError):  # an unknown task: no lung
        return False


def run_gradcam(output_dir: str | os.PathLike, task: str = "", fraction: float = 1.0, seed: int = 0,
                profile: str = "quick", inits: Sequence[str] | None = None, *, target: str = "auto",
                fold: int = -1, progress: bool = False, lung: bool | str = "auto") -> GradCamResult:
    """Heat maps of every explanation method of the profile (:func:`gradcam_for_inits`), the
    correlation, localisation and agreement tables with the profile's settings; the tables are
    written next to the cache as ``{task}_f{fraction}_s{seed}[_k{fold}]_correlation.csv``,
    ``..._localisation.csv`` and ``..._agreement.csv``.
    ``task``: empty: the study's first task (``<output>/tasks.json``; the paper's COVID-19 by default).
    ``fold < 0`` on a cross-validated task: the fold run ``seed`` used (:func:`ssl_lib.tasks.fold_of`).
    ``lung``: score the maps inside the lung (``"auto"``: :func:`lung_task`).
    """
    names = use_study_tasks(output_dir)  # the study's user tasks become known here
    task = task or names[0]
    if fold < 0:  # a cross-validated task: the fold that run `seed` used
        fold = fold_of(task, seed)
    if profile not in PROFILE_NAMES:
        raise ExplainError(f"unknown profile {profile!r}; choose one of {PROFILE_NAMES}")
    if lung == "auto":
        lung = lung_task(task)
    elif not isinstance(lung, bool):
        raise ExplainError(f"lung must be True, False or 'auto', got {lung!r}")
    prof = explain_profile(profile)
    occ = Occlusion(prof.occlusion_size, prof.occlusion_stride, prof.occlusion_fill, prof.occlusion_max_images,
                    prof.occlusion_on)
    heat = gradcam_for_inits(output_dir, task, fraction, seed, inits=inits, target=target, fold=fold,
                             max_images=prof.max_images, batch_size=prof.batch_size, input_size=prof.input_size,
                             stage=prof.stage, progress=progress, explainers=prof.explainers,
                             occlusion=occ if "occlusion" in prof.explainers else None, lung=lung)
    corr = correlation_table(heat, n_boot=prof.n_boot, seed=seed)
    loc = explanation_table(heat, tolerance=prof.tolerance, n_boot=prof.n_boot, seed=seed)
    agree = agreement_table(heat, n_boot=prof.n_boot, seed=seed)
    stem = cache_path(output_dir, task, fraction, seed, fold).with_suffix("")
    files = {"cache": stem.with_suffix(".npz"),
             "correlation": stem.with_name(stem.name + "_correlation.csv"),
             "localisation": stem.with_name(stem.name + "_localisation.csv"),
             "agreement": stem.with_name(stem.name + "_agreement.csv")}
    for name, table in (("correlation", corr), ("localisation", loc), ("agreement", agree)):
        with atomic_path(files[name]) as tmp:
            table.to_csv(tmp, index=False)
    return GradCamResult(heat, corr, loc, files, agree)
