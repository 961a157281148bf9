"""Where the fine-tuned models look: Grad-CAM heat maps, their agreement, their localisation.

Wolf et al. 2023 (Results, Figure 4) apply Grad-CAM (Selvaraju et al. 2017, through the
``pytorch-grad-cam`` library) to the COVID-19 test images with the fine-tuned ResNet50 of each
pre-training method, show two positive and two negative examples (input, then one heat-map
overlay per method) and compare the methods by the Pearson correlation of two methods' heat maps
of the same image, averaged over the test set (they report means of 0.02-0.07).

This module does that and adds what the paper leaves out:

- :func:`gradcam_maps`: Grad-CAM of one model at its last ResNet stage (``model.target_layer``
  = ``backbone.layer4[-1]``; the profiles may choose another stage and enlarge small images
  first, see :data:`PROFILES`) for a batch of images; float32 ``(N, H, W)`` in ``[0, 1]`` at the
  input's size (``pytorch_grad_cam`` min-max scales each map; an all-zero map stays zero).
- :func:`gradcam_for_inits`: the maps of every initialisation's fine-tuned model on the same
  test images, cached as ``StudyPaths.gradcam / f"{task}_f{fraction}_s{seed}.npz"``
  (:class:`HeatMaps`).
- :func:`correlation_table`: per-image Pearson r for every pair of methods, mean with a
  bootstrap 95 % interval over images. A constant map (e.g. all zero after Grad-CAM's ReLU) has
  no defined correlation: such images are left out of that pair and counted (``n_constant``).
- :func:`localisation_table`: where a lesion mask exists, the share of heat-map energy inside
  the mask and the pointing-game hit rate (is the map's maximum inside the mask, dilated by a
  tolerance?), on positive images with a non-empty mask, next to two baselines that know nothing
  of the image: a uniform-random map (scores about the mask's area fraction) and a centre
  Gaussian prior. Constant maps are left out and counted (``n_excluded``).
- Figures: :func:`plot_examples` (the Figure 4 layout), :func:`plot_correlation` (seaborn heat
  map), :func:`plot_localisation`; :func:`heatmap_browser` (ipywidgets, for JupyterLab).

Shapes: images uint8 ``(N, H, W)``; masks uint8 ``(N, H, W)`` (1 = lesion); maps float32
``(N, H, W)``; labels int ``(N,)``.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .data.store import SliceStore, normalize_batch
from .paths import StudyPaths

#: Initialisations in display order ("random" = no pre-training).
INITS = ("random", "byol", "swav", "mocov2", "spark")
LABELS = {"random": "Random", "byol": "BYOL", "swav": "SwAV", "mocov2": "MoCoV2", "spark": "SparK",
          "uniform-random": "uniform random", "centre-gaussian": "centre Gaussian"}
#: What Grad-CAM explains: the finding (class 1), the true class, or the predicted class.
TARGET_MODES = ("auto", "positive", "true", "predicted")
BASELINES = ("uniform-random", "centre-gaussian")


class ExplainError(ValueError):
    """Missing models or unusable inputs; the message names the file and the problem."""


@dataclass(frozen=True)
class ExplainProfile:
    """``max_images``: cap on test images explained (None = all); ``tolerance``: pointing-game
    tolerance in pixels (Zhang et al. use 15 px at 224 px); ``n_boot``: bootstrap resamples;
    ``input_size``: smaller images (and masks) are enlarged to this size before Grad-CAM (None:
    as stored); ``stage``: the ResNet stage whose last block Grad-CAM reads."""

    max_images: int | None
    batch_size: int
    n_boot: int
    tolerance: int
    input_size: int | None = None
    stage: str = "layer4"


#: The quick profile fine-tunes at 64 px, where the last stage (layer4, stride 32) is a 2 x 2
#: grid: a map cannot point at anything. Its Grad-CAM enlarges the test images to 128 px and
#: reads layer2 (stride 8), a 16 x 16 grid: the synthetic lesions are patches of a few pixels,
#: 2 % of the image, so a cell of the 8 x 8 grid of layer3 is as large as a lesion; and with
#: one full fine-tuning epoch layer3 keeps pre-training features whose gradients for the
#: finding were all negative in up to half of the maps (constant maps) in measured quick studies.
PROFILES = {
    "smoke": ExplainProfile(max_images=16, batch_size=8, n_boot=200, tolerance=2),
    "quick": ExplainProfile(max_images=128, batch_size=32, n_boot=1000, tolerance=8, input_size=128,
                            stage="layer2"),
    "paper": ExplainProfile(max_images=None, batch_size=32, n_boot=2000, tolerance=15),
}
STAGES = ("layer1", "layer2", "layer3", "layer4")


def _label(init: str) -> str:
    return LABELS.get(init, init)


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
             device=None, progress=False):
    """Grad-CAM maps plus, per image, the explained class, its softmax probability and the
    predicted class: ``(maps (N,H,W) float32, target (N,), prob (N,), pred (N,))``."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = _as_input(images, mean, std)
    n = len(x)
    num_classes = int(getattr(model, "num_classes", 0) or model(x[:1]).shape[1])
    fixed = _resolve_targets(targets, n, num_classes)
    if device is not None:
        model = model.to(device)
    layer = target_layer if target_layer is not None else getattr(model, "target_layer", None)
    if layer is None:
        layer = model.backbone.layer4[-1]
    maps = np.zeros((n, *x.shape[-2:]), np.float32)
    tgt, prob, pred = np.zeros(n, np.int64), np.zeros(n, np.float32), np.zeros(n, np.int64)
    if n == 0:
        return maps, tgt, prob, pred
    was_training = model.training  # GradCAM switches the model to eval mode; restored below
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="Grad-CAM", unit="batch")
    with torch.enable_grad(), _grad_only_in(model, layer), GradCAM(model=model, target_layers=[layer]) as cam:
        for s in starts:
            xb = x[s:s + batch_size]
            tb = None if fixed is None else [ClassifierOutputTarget(int(c)) for c in fixed[s:s + len(xb)]]
            out = cam(input_tensor=xb, targets=tb)  # the whole batch in one call
            logits = cam.outputs.detach().float().cpu()
            pb = logits.argmax(1).numpy()
            tb_idx = pb if fixed is None else fixed[s:s + len(xb)]
            maps[s:s + len(xb)] = out
            tgt[s:s + len(xb)], pred[s:s + len(xb)] = tb_idx, pb
            prob[s:s + len(xb)] = logits.softmax(1)[torch.arange(len(xb)), torch.as_tensor(tb_idx)].numpy()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    np.nan_to_num(maps, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(maps, 0.0, 1.0, out=maps)
    return maps, tgt, prob, pred


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
                    target_layer=target_layer, device=device, progress=progress)[0]


# ----------------------------------------------------------------------------------------------
# Heat maps of every initialisation on the same test images


@dataclass
class HeatMaps:
    """Grad-CAM maps of several fine-tuned models on the same images.

    ``images`` uint8 ``(N, H, W)``; ``labels`` int ``(N,)``; ``masks`` uint8 ``(N, H, W)`` or
    ``None``; ``maps``: init -> float32 ``(N, H, W)``; ``indices``: store indices ``(N,)``;
    ``targets``/``probs``/``preds``: init -> ``(N,)`` explained class, its softmax probability,
    predicted class.
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

    @property
    def inits(self) -> list[str]:
        return list(self.maps)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (f"HeatMaps(task={self.task!r}, n={len(self)}, size={self.images.shape[1:]}, "
                f"inits={self.inits}, masks={self.masks is not None})")

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def summary(self) -> pd.DataFrame:
        """Per method: images, accuracy, mean probability of the explained class, constant maps."""
        rows = []
        for init, m in self.maps.items():
            rows.append({
                "method": _label(init), "n": len(m),
                "accuracy": float(np.mean(self.preds[init] == self.labels)) if init in self.preds and len(m) else np.nan,
                "mean_prob_target": float(np.mean(self.probs[init])) if init in self.probs and len(m) else np.nan,
                "constant_maps": _n_constant(m),
            })
        return pd.DataFrame(rows)

    # -- cache ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write a compressed ``.npz`` atomically (maps as ``map__<init>``, meta as JSON)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"images": self.images, "labels": self.labels, "indices": self.indices}
        if self.masks is not None:
            arrays["masks"] = self.masks
        for init in self.inits:
            arrays[f"map__{init}"] = self.maps[init]
            for key, d in (("target", self.targets), ("prob", self.probs), ("pred", self.preds)):
                if init in d:
                    arrays[f"{key}__{init}"] = d[init]
        meta = {"task": self.task, "class_names": self.class_names, "task_kind": self.task_kind,
                "inits": self.inits, **self.meta}
        arrays["meta"] = np.array(json.dumps(meta))
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeatMaps":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                inits = meta.pop("inits")
                get = lambda key: {i: z[f"{key}__{i}"] for i in inits if f"{key}__{i}" in z.files}  # noqa: E731
                return cls(images=z["images"], labels=z["labels"], masks=z["masks"] if "masks" in z.files else None,
                           maps=get("map"), indices=z["indices"], task=meta.pop("task"),
                           class_names=meta.pop("class_names"), task_kind=meta.pop("task_kind"),
                           targets=get("target"), probs=get("prob"), preds=get("pred"), meta=meta)
        except (OSError, KeyError, ValueError) as err:
            raise ExplainError(f"{path}: not a readable heat-map cache ({err})") from None


def _run_stem(fraction: float, seed: int, fold: int = -1) -> str:
    return f"f{float(fraction)}_s{int(seed)}" + (f"_k{int(fold)}" if fold is not None and fold >= 0 else "")


def model_path(output_dir: str | os.PathLike, task: str, init: str, fraction: float = 1.0, seed: int = 0,
               fold: int = -1) -> Path:
    """Where fine-tuning saved the model of (task, init, fraction, seed[, CV fold])."""
    return StudyPaths(output_dir).finetune / "models" / task / init / f"{_run_stem(fraction, seed, fold)}.pt"


def cache_path(output_dir: str | os.PathLike, task: str, fraction: float = 1.0, seed: int = 0, fold: int = -1) -> Path:
    return StudyPaths(output_dir).gradcam / f"{task}_{_run_stem(fraction, seed, fold)}.npz"


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


def gradcam_for_inits(output_dir: str | os.PathLike, task: str, fraction: float = 1.0, seed: int = 0,
                      indices: Sequence[int] | None = None, inits: Sequence[str] | None = None, *,
                      target: str = "auto", split: str = "test", max_images: int | None = None,
                      batch_size: int = 32, device: str | torch.device | None = None,
                      fold: int = -1, use_cache: bool = True, input_size: int | None = None,
                      stage: str = "layer4", progress: bool = False) -> HeatMaps:
    """Grad-CAM maps of each init's fine-tuned model on the same ``task`` test images.

    Models: ``model_path(output_dir, task, init, fraction, seed, fold)``; ``inits=None`` takes
    those of :data:`INITS` that exist (an explicitly named init that is missing is an error).
    Images: ``indices`` (store indices) or the ``split`` (at most ``max_images``, see
    :func:`select_indices`); for a cross-validated task (``fold >= 0``, the Brain task) the test
    fold of :func:`ssl_lib.tasks.task_splits` instead of ``split``. ``target``: ``"auto"`` (the
    finding, class 1, for binary tasks; the true class otherwise), ``"positive"``, ``"true"`` or
    ``"predicted"``. Each model is run with the mean/std it was fine-tuned with (its saved info;
    the store's as a fallback). ``input_size``: images smaller than this are enlarged (bilinear;
    masks nearest) before Grad-CAM; ``stage``: the ResNet stage (``layer1`` ... ``layer4``) whose
    last block is the target layer.

    Cached in ``cache_path(...)`` (one file per task, fraction, seed, fold: the last call wins); the
    cache is reused only if it was made from the same models (file time and size), images, inits
    and target. ``use_cache=False`` neither reads nor writes it.
    """
    from .models.classifier import load_classifier

    if target not in TARGET_MODES:
        raise ExplainError(f"target must be one of {TARGET_MODES}, got {target!r}")
    if stage not in STAGES:
        raise ExplainError(f"stage must be one of {STAGES}, got {stage!r}")
    paths = StudyPaths(output_dir)
    store_dir = paths.store(task)
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
        inits = [i for i in INITS if model_path(output_dir, task, i, fraction, seed, fold).is_file()]
        if not inits:
            raise ExplainError(f"{paths.finetune / 'models' / task}: no fine-tuned model "
                               f"{_run_stem(fraction, seed, fold)}.pt for any of {INITS}; run fine-tuning first "
                               "(cross-validated tasks: pass the fold)")
    files = {i: model_path(output_dir, task, i, fraction, seed, fold) for i in inits}
    for i, f in files.items():
        if not f.is_file():
            raise ExplainError(f"{f}: no fine-tuned model for init {i!r}; run fine-tuning first")

    if indices is not None:
        idx = np.asarray(indices, np.int64)
    elif fold is not None and fold >= 0:
        from .tasks import task_splits

        idx = select_indices(store, max_images=max_images, seed=seed,
                             candidates=task_splits(store, task, seed, fold=fold).test)
    else:
        idx = select_indices(store, split, max_images, seed)
    if len(idx) == 0:
        raise ExplainError(f"{store_dir}: no images to explain in split {split!r}")
    meta = {"fraction": float(fraction), "seed": int(seed), "fold": int(fold), "target": target,
            "models": {i: _signature(f) for i, f in files.items()}, "input_size": input_size, "stage": stage}
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
    if input_size is not None and images.shape[-1] < input_size:
        images, masks = enlarge(images, input_size), None if masks is None else enlarge(masks, input_size, nearest=True)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    heat = HeatMaps(images=images, labels=labels, masks=masks, maps={}, indices=idx, task=task,
                    class_names=store.class_names, task_kind=kind, meta=meta)
    for init, f in files.items():
        model, info = load_classifier(f, map_location=device)
        mean, std = float(info.get("mean", store.mean)), float(info.get("std", store.std))
        tmode = {"positive": 1, "true": labels, "predicted": "predicted"}[target]
        m, t, p, pr = _explain(model, images, tmode, mean=mean, std=std, batch_size=batch_size,
                               target_layer=getattr(model.backbone, stage)[-1], device=device, progress=progress)
        heat.maps[init], heat.targets[init], heat.probs[init], heat.preds[init] = m, t, p, pr
    if use_cache:
        heat.save(cache)
    return heat


def enlarge(images: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """uint8 ``(N, H, W)`` resized to ``(N, size, size)`` (bilinear, or nearest for masks)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()[:, None]
    mode = {"mode": "nearest"} if nearest else {"mode": "bilinear", "align_corners": False}
    y = torch.nn.functional.interpolate(x, size=(size, size), **mode)
    return y[:, 0].round_().clamp_(0, 255).to(torch.uint8).numpy()


def _n_constant(maps: np.ndarray) -> int:
    """How many of the maps ``(N, H, W)`` are constant (max - min <= 1e-6)."""
    return int(np.sum(np.ptp(maps.reshape(len(maps), -1), axis=1) <= _CONST_EPS)) if len(maps) else 0


def dropped_maps(heat: HeatMaps) -> pd.DataFrame:
    """Maps the correlation and localisation analyses leave out, per method, and why.

    A constant map (Grad-CAM found no positive evidence for the explained class: all zero after
    its ReLU) has no defined correlation and no energy to place; columns: method, n, constant,
    share, reason.
    """
    rows = []
    for init, m in heat.maps.items():
        n_const = _n_constant(m)
        rows.append({"method": _label(init), "n": len(m), "constant": n_const,
                     "share": n_const / len(m) if len(m) else np.nan,
                     "reason": "constant map: no positive Grad-CAM evidence for the explained class"})
    return pd.DataFrame(rows, columns=["method", "n", "constant", "share", "reason"])


# ----------------------------------------------------------------------------------------------
# Agreement between methods

_CONST_EPS = 1e-6


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


def correlation_table(maps: HeatMaps | Mapping[str, np.ndarray], *, n_boot: int = 1000, ci: float = 0.95,
                      seed: int = 0) -> pd.DataFrame:
    """For every pair of methods, the per-image Pearson r of their heat maps averaged over images.

    Columns: ``init_a, init_b, mean_r, ci_low, ci_high, n, n_constant`` — ``n`` images with a
    defined r, ``n_constant`` left out because one of the two maps is constant. The interval is a
    percentile bootstrap over images (the paper gives the mean only).
    """
    maps = maps.maps if isinstance(maps, HeatMaps) else dict(maps)
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


def localisation_table(maps: HeatMaps | Mapping[str, np.ndarray], masks: np.ndarray | None = None,
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
    if isinstance(maps, HeatMaps):
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
# One call for the notebook / study runner


@dataclass
class GradCamResult:
    heat: HeatMaps
    correlation: pd.DataFrame
    localisation: pd.DataFrame
    files: dict[str, Path]

    @property
    def dropped(self) -> pd.DataFrame:
        """Maps left out of the correlation and localisation, per method, and why (:func:`dropped_maps`)."""
        return dropped_maps(self.heat)


def run_gradcam(output_dir: str | os.PathLike, task: str = "", fraction: float = 1.0, seed: int = 0,
                profile: str = "quick", inits: Sequence[str] | None = None, *, target: str = "auto",
                fold: int = -1, progress: bool = False) -> GradCamResult:
    """Heat maps (:func:`gradcam_for_inits`), the correlation and localisation tables with the
    profile's settings; the tables are written next to the cache as
    ``{task}_f{fraction}_s{seed}[_k{fold}]_correlation.csv`` and ``..._localisation.csv``.
    ``task``: empty: the study's first task (``<output>/tasks.json``; the paper's COVID-19 by default).
    ``fold < 0`` on a cross-validated task: the fold run ``seed`` used (:func:`ssl_lib.tasks.fold_of`).
    """
    from .tasks import use_study_tasks

    from .tasks import fold_of

    names = use_study_tasks(output_dir)  # the study's user tasks become known here
    task = task or names[0]
    if fold < 0:  # a cross-validated task: the fold that run `seed` used
        fold = fold_of(task, seed)
    if profile not in PROFILES:
        raise ExplainError(f"unknown profile {profile!r}; choose one of {tuple(PROFILES)}")
    prof = PROFILES[profile]
    heat = gradcam_for_inits(output_dir, task, fraction, seed, inits=inits, target=target, fold=fold,
                             max_images=prof.max_images, batch_size=prof.batch_size, input_size=prof.input_size,
                             stage=prof.stage, progress=progress)
    corr = correlation_table(heat, n_boot=prof.n_boot, seed=seed)
    loc = localisation_table(heat, tolerance=prof.tolerance, n_boot=prof.n_boot, seed=seed)
    stem = cache_path(output_dir, task, fraction, seed, fold).with_suffix("")
    files = {"cache": stem.with_suffix(".npz"),
             "correlation": stem.with_name(stem.name + "_correlation.csv"),
             "localisation": stem.with_name(stem.name + "_localisation.csv")}
    corr.to_csv(files["correlation"], index=False)
    loc.to_csv(files["localisation"], index=False)
    return GradCamResult(heat, corr, loc, files)


# ----------------------------------------------------------------------------------------------
# Figures


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
    for c, title in enumerate(["Input"] + [_label(i) for i in inits]):
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
    labels = [_label(i) for i in mat.index]
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
        ax.set_xticks(x, [_label(m) for m in t["method"]], rotation=30, ha="right", fontsize=8)
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
    axes[1].set_title(f"{_label(init)}{p}", fontsize=10)
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
                            [("image", [names[i] for i in picks]), ("method", [_label(i) for i in heat.inits])],
                            slider=[True, False])
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    image = widgets.Dropdown(options=[(name, i) for i, name in enumerate(names)], description="image")
    method = widgets.Dropdown(options=[(_label(i), i) for i in heat.inits], description="method")
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
