"""Fine-tuning on the downstream tasks (Wolf et al. 2023, "Downstream Evaluation/Tasks").

The paper's protocol: a ResNet50 initialised from a pre-trained encoder (or randomly, the "-"
row of Table 2) plus one linear layer; Adam, lr 1e-4, batch 64; only the linear layer trains for
the first ten epochs, then the whole model. Where the paper is silent the ``paper`` profile
follows the authors' code: weight decay 5e-4, 70 epochs, the backbone's learning rate ramped up
after unfreezing as Lightning's ``BackboneFinetuning`` does by default (start at 0.1 x lr, x1.5
per epoch, capped at lr), the checkpoint with the best validation accuracy is tested, training
slices are augmented as the authors' MONAI ``RandFlip`` + ``RandRotate`` (``augment="monai"``, batched
on the device, :mod:`ssl_lib.finetune_augment`), and the backbone's BatchNorm layers keep training while the
rest of the backbone is frozen, as Lightning's ``BackboneFinetuning`` (``train_bn=True``) does:
in train mode, their weights and biases updated at the head's lr from the first epoch on
(``train_bn_frozen``). The smaller profiles instead keep the frozen backbone in eval mode, so
that its features can be computed once.

Implementation, chosen for speed on small CPUs (plain PyTorch, no Lightning loop):

* the store's slices for a task are read once into a uint8 tensor ``(N, 1, H, W)``
  (:class:`TaskData`); runs index it, nothing is decoded per epoch;
* batches are normalised with the mean/std of the run's training split (all of its slices, the
  same at every fraction; :meth:`TaskData.normalised_by`, the paper's "mean and standard deviation
  of the dataset" without its validation and test slices) and repeated to 3 channels
  (:func:`ssl_lib.data.store.normalize_batch`), flipped at random on the batch tensor (or
  flipped and rotated as MONAI's transforms in one batched op, ``augment="monai"``), all on the
  device, indexed with device indices and prepared one step ahead (:mod:`ssl_lib.finetune_feed`);
* the linear-only phase computes the frozen backbone's features once (of each slice and of its
  mirror image when flipping) and trains the head on them: the same result as running the
  frozen backbone every epoch, at the cost of two forward passes (not with ``augment="monai"``
  or ``train_bn_frozen``, where the backbone sees every augmented batch). A grid keeps
  the features of a task's slices per backbone in its :class:`FeatureCache` (keyed by a hash of the
  weights and of the slices), so the runs of one init at other fractions and seeds reuse them;
* :func:`run_grid` spreads runs over worker processes (``workers``; on the CPU each worker gets
  an equal share of the threads: on 2 cores two single-threaded workers ran a quick-profile grid
  1.24x faster than one two-threaded process, and sharing features 1.22x faster than
  recomputing them per run, ``benchmarks/grid_speed.py``);
* the best validation state is kept in memory and the test set is evaluated once with it;
* on a GPU (the paper profile's setting): bfloat16 autocast (``precision``, see
  :mod:`ssl_lib.precision`), channels-last tensors, cuDNN autotuning (:mod:`ssl_lib.torch_flags`,
  restored after the run), the training slices copied to the device once and no per-step
  host-device sync (the epoch's loss is summed on the device and read once).

Every run appends one row to ``StudyPaths.results`` (:data:`ssl_lib.runs.RESULT_COLUMNS`) and writes
per-epoch curves (``finetune/curves``) and per-slice test probabilities (``finetune/predictions``,
for :mod:`ssl_lib.stats`), named and written by :mod:`ssl_lib.runs`; in a grid only the models that a later step reads are written
(``finetune/models``; ``FinetuneProfile.keep_models``: the first seed at the largest fraction).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .atomic import atomic_path
from .data.store import SliceStore, normalize_batch
from .baselines import BASELINE_INITS, IMAGENET
from .finetune_augment import AUGMENTS, FlipRotate
from .finetune_feed import Prefetcher, prepare_images, random_mask, shuffled_batches, to_device
from .inits import (EncoderInit, InitError, apply_init, available_methods, has_imagenet, list_encoder_epochs,  # noqa: F401
                    load_init, use_imagenet_weights)  # use_imagenet_weights: re-exported for the notebooks
from .metrics import accuracy, auc, compute_metrics
from .metrics import f1 as f1_metric
from .models.classifier import Classifier, save_classifier
from .paths import StudyPaths
from .profiles import FinetuneProfile
from .profiles import finetune_profile as get_profile
from .precision import autocast, resolve_channels_last, resolve_precision
from .reduction import reduce_indices, stop_reducing
from .torch_flags import run_flags, torch_flags
from .runs import RESULT_COLUMNS, RUN_KEY, append_result, read_results, run_file, write_curves, write_predictions  # noqa: F401 (RESULT_COLUMNS: re-exported)
from .tasks import (Split, TaskSpec, class_counts, fold_of, get_task, task_names,
                    task_splits, task_store_path, use_study_tasks)


# --------------------------------------------------------------------------- data in memory
def pixel_stats(images: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the grey values ``/ 255`` of uint8 slices ``(N, 1, H, W)``.

    Exact and independent of thread count (a 256-bin histogram, then float64 moments), so the
    same slices always give bit-identical statistics.
    """
    arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype != np.uint8 or arr.size == 0:
        raise ValueError(f"pixel_stats needs a non-empty uint8 array, got {arr.dtype} of size {arr.size}")
    hist = np.bincount(arr.reshape(-1), minlength=256).astype(np.float64)
    v = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum()
    mean = float((hist * v).sum() / n)
    var = float((hist * (v - mean) ** 2).sum() / n)
    return mean, float(np.sqrt(max(var, 1e-12)))


@dataclass
class TaskData:
    """A task's store read once into memory: ``images`` uint8 ``(N, 1, S, S)`` for all slices.

    ``mean``/``std``: the normalisation of the grey values ``/ 255``. :func:`load_task_data`
    sets the store's statistics (all its slices); a run always normalises with those of its
    training split only (:meth:`normalised_by`, as :func:`finetune_run` does), so that no test or
    validation slice enters a fitted quantity.
    """

    spec: TaskSpec
    store: SliceStore
    images: torch.Tensor
    labels: torch.Tensor
    mean: float
    std: float
    synthetic: bool
    images_hash: dict = field(default_factory=dict, repr=False)  # shared by the copies of normalised_by

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def fingerprint(self) -> str:
        """Hash of the slices in memory and the normalisation (the key of their cached features, :func:`frozen_features`)."""
        if "h" not in self.images_hash:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr(tuple(self.images.shape)).encode())
            h.update(self.images.contiguous().numpy().tobytes())
            self.images_hash["h"] = h.hexdigest()
        return f"{self.images_hash['h']}-{self.mean!r}-{self.std!r}"

    def normalised_by(self, indices: Sequence[int] | np.ndarray) -> "TaskData":
        """This data normalised with the statistics of the slices ``indices`` (a run's training split)."""
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        mean, std = pixel_stats(self.images[idx])
        return replace(self, mean=mean, std=std)


def load_task_data(output_dir_or_store: str | os.PathLike | SliceStore, task: str | TaskSpec,
                   image_size: int | None = None) -> TaskData:
    """Read the task's store (:func:`ssl_lib.tasks.task_store_path` of a study folder, or a store/its path) into memory.

    Slices are resized once to ``image_size`` when the store holds another size.
    """
    if not isinstance(output_dir_or_store, SliceStore) and not (Path(output_dir_or_store) / "meta.json").is_file():
        use_study_tasks(output_dir_or_store)  # the study's user tasks
    spec = get_task(task)
    if isinstance(output_dir_or_store, SliceStore):
        store = output_dir_or_store
    else:
        p = Path(output_dir_or_store)
        store = SliceStore(p if (p / "meta.json").is_file() else task_store_path(p, spec))
    images = torch.from_numpy(np.array(store.images, dtype=np.uint8)).unsqueeze(1)  # one read, in memory
    if image_size is not None and image_size != store.image_size:
        chunks = [F.interpolate(c.float(), size=(image_size, image_size), mode="bilinear", antialias=True,
                                align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
                  for c in images.split(1024)]
        images = torch.cat(chunks)
    labels = torch.from_numpy(store.labels.astype(np.int64))
    return TaskData(spec, store, images, labels, store.mean, store.std, store.synthetic)


# --------------------------------------------------------------------------- training
@dataclass
class FitResult:
    """``model`` holds the best validation state; ``curves``: one row per epoch."""

    model: Classifier
    best_epoch: int
    curves: pd.DataFrame
    val_metrics: dict


def device_options(prof: FinetuneProfile, device: str | torch.device) -> tuple[bool, str]:
    """``(channels_last, precision)`` of ``prof`` on ``device`` (``None``/``"auto"`` resolved)."""
    precision = resolve_precision(device, prof.precision)
    if precision not in ("32-true", "bf16-mixed"):
        raise ValueError(f"fine-tuning supports precision '32-true', 'bf16-mixed' or 'auto', got {precision!r}")
    return resolve_channels_last(device, prof.channels_last), precision


def _prep(x_uint8: torch.Tensor, mean: float, std: float, device, channels_last: bool) -> torch.Tensor:
    x = normalize_batch(x_uint8.to(device, non_blocking=True), mean, std, channels=3)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor, *,
                   device: str | torch.device = "cpu", precision: str = "32-true") -> torch.Tensor:
    """One full-model step on a prepared float batch ``x`` ``(B, 3, H, W)`` and labels ``(B,)`` on the device.

    Forward and loss under ``precision``'s autocast, backward, optimiser step. Returns the batch's
    cross-entropy loss as a detached 0-d tensor on the device (no host-device sync).
    """
    with autocast(device, precision):
        loss = F.cross_entropy(model(x), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor, *,
               mean: float, std: float, device: str | torch.device = "cpu", channels_last: bool = False,
               flip: bool = True, generator: torch.Generator | None = None,
               precision: str = "32-true", augment=None) -> torch.Tensor:
    """One full-model step on a uint8 batch ``(B, 1, H, W)``: normalise, flip/augment, forward, backward, Adam.

    :func:`ssl_lib.finetune_feed.prepare_images` then :func:`optimizer_step`. ``augment``: a
    callable ``(x, generator)`` applied to the normalised batch on the device (e.g.
    :class:`~ssl_lib.finetune_augment.FlipRotate`), after the optional flip; ``generator``: where
    the flip and the augmentation draw (a generator on the device; default: the global one).
    ``precision="bf16-mixed"`` runs forward and loss under bfloat16 autocast. Returns the batch's
    cross-entropy loss as a detached 0-d tensor on ``device`` (no host-device sync; ``float()`` it
    when needed).
    """
    device = torch.device(device)
    x = prepare_images(images, mean=mean, std=std, device=device, channels_last=channels_last, flip=flip,
                       augment=augment, generator=generator)
    return optimizer_step(model, opt, x, labels.to(device, non_blocking=True), device=device, precision=precision)


@torch.inference_mode()
def predict_proba(model: torch.nn.Module, images: torch.Tensor, mean: float, std: float, *, batch_size: int = 256,
                  device: str | torch.device = "cpu", channels_last: bool = False,
                  precision: str = "32-true") -> np.ndarray:
    """Softmax probabilities ``(N, C)`` of uint8 slices ``(N, 1, H, W)`` (model in eval mode)."""
    model.eval()
    with autocast(device, precision):
        out = [torch.softmax(model(_prep(b, mean, std, device, channels_last)).float(), 1)
               for b in images.split(batch_size)]
    return torch.cat(out).cpu().numpy().astype(np.float64)  # one copy to the host


@torch.inference_mode()
def _features(backbone, images, mean, std, batch_size, device, channels_last, flip=False,
              precision: str = "32-true") -> torch.Tensor:
    backbone.eval()
    feats = []
    with autocast(device, precision):
        for b in images.split(batch_size):
            x = _prep(b, mean, std, device, channels_last)
            feats.append(backbone(x.flip(-1) if flip else x).float())
    return torch.cat(feats)


#: Most bytes a :class:`FeatureCache` holds by default (oldest entries are dropped first; the newest is always kept).
FEATURE_CACHE_BYTES = 1 << 30


def weights_fingerprint(module: torch.nn.Module) -> str:
    """Hash of a module's parameters and buffers (names, shapes, dtypes and values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in module.state_dict().items():
        t = t.detach()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _SliceFeatures:
    """Features ``(N, D)`` of a task's N slices (or of their mirror images), filled in as rows are asked for."""

    def __init__(self, n: int):
        self.values: torch.Tensor | None = None
        self.have = np.zeros(n, dtype=bool)

    @property
    def nbytes(self) -> int:
        return 0 if self.values is None else self.values.numel() * self.values.element_size()

    def rows(self, idx: np.ndarray, compute) -> torch.Tensor:
        missing = np.unique(idx[~self.have[idx]])
        if len(missing):
            new = compute(missing)
            if self.values is None:
                self.values = new.new_zeros((len(self.have), new.shape[1]))
            self.values[torch.from_numpy(missing).to(new.device)] = new
            self.have[missing] = True
        return self.values[torch.from_numpy(np.asarray(idx)).to(self.values.device)]


class FeatureCache:
    """Frozen-backbone features of task slices, per backbone, most recently used last.

    Owned by whoever runs a series of runs: :func:`run_grid` makes one per grid (its worker
    processes and cluster jobs one each), a benchmark its own; two caches share nothing. Entries
    are keyed by a hash of the backbone's weights and of the slices (plus device, precision and
    memory format); each entry holds the features ``(N, D)`` of the task's N slices and of their
    mirror images, filled in as rows are asked for. Beyond ``max_bytes`` the oldest entries are
    dropped (the newest is always kept). A copy sent to another process (pickled) starts empty:
    features never cross processes.
    """

    def __init__(self, max_bytes: int = FEATURE_CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple, tuple[_SliceFeatures, _SliceFeatures]] = OrderedDict()

    def __reduce__(self):
        return type(self), (self.max_bytes,)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()

    def entry(self, key: tuple, n: int) -> tuple[_SliceFeatures, _SliceFeatures]:
        """The (plain, mirrored) features of ``key`` for ``n`` slices, made empty if new; now the most recent."""
        if key not in self._entries:
            self._entries[key] = (_SliceFeatures(n), _SliceFeatures(n))
        self._entries.move_to_end(key)
        return self._entries[key]

    def trim(self) -> None:
        """Drop the oldest entries while the cache holds more than ``max_bytes`` (keeps the newest)."""
        while len(self._entries) > 1 and self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)


def frozen_features(backbone: torch.nn.Module, data: TaskData, profile: str | FinetuneProfile,
                    train_idx: np.ndarray, val_idx: np.ndarray, device: str | torch.device = "cpu",
                    cache: FeatureCache | None = None) -> "FrozenFeatures":
    """The linear phase's input: the frozen (eval-mode) ``backbone``'s features of ``data``'s slices.

    Features of training slices (and of their mirror images when the profile flips) and of
    validation slices, by index into the task. With a ``cache`` (:class:`FeatureCache`) each
    slice is computed once for it: the runs of one init on one task (every fraction and seed; for
    a random init every fraction of one seed) share them; without one they are computed here and
    kept nowhere. The backbone must already be on ``device`` (in channels-last format where the
    profile uses it).
    """
    prof = get_profile(profile)
    device = torch.device(device)
    cl, precision = device_options(prof, device)
    cache = cache if cache is not None else FeatureCache()
    key = (weights_fingerprint(backbone), data.fingerprint, str(device), cl, precision)
    plain, mirrored = cache.entry(key, len(data.images))

    def compute(flip: bool):
        return lambda rows: _features(backbone, data.images[torch.from_numpy(rows)], data.mean, data.std,
                                      prof.eval_batch_size, device, cl, flip=flip, precision=precision)

    train_idx, val_idx = np.asarray(train_idx, dtype=np.int64), np.asarray(val_idx, dtype=np.int64)
    both = np.concatenate([train_idx, val_idx])  # one pass over the missing plain rows
    plain.rows(both, compute(False))
    result = FrozenFeatures(plain.rows(train_idx, compute(False)),
                            mirrored.rows(train_idx, compute(True)) if prof.augment == "flip" else None,
                            plain.rows(val_idx, compute(False)))
    cache.trim()
    return result


def _val_row(probs: np.ndarray, labels: np.ndarray, loss: float) -> dict:
    return {"val_loss": loss, "val_accuracy": accuracy(labels, probs), "val_auc": auc(labels, probs),
            "val_f1": f1_metric(labels, probs)}


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))


@dataclass(frozen=True)
class FrozenFeatures:
    """The frozen backbone's features for the linear-only phase, ``(N, D)`` float32 on the device.

    ``train``: of the training slices; ``train_flipped``: of their mirror images (``None``
    without flip augmentation); ``val``: of the validation slices.
    """

    train: torch.Tensor
    train_flipped: torch.Tensor | None
    val: torch.Tensor


def fit(model: Classifier, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
        profile: str | FinetuneProfile, *, mean: float, std: float, seed: int = 0,
        device: str | torch.device = "cpu", progress: bool = False,
        frozen: FrozenFeatures | None = None, prefetch: bool = True) -> FitResult:
    """Fine-tune ``model`` in place (linear-only, then full), return it at its best validation epoch.

    ``train_x``/``val_x``: uint8 ``(N, 1, H, W)``; ``train_y``/``val_y``: int64 ``(N,)``.
    ``frozen``: the linear phase's features when already computed (they must come from this
    model's backbone on these slices, see :func:`frozen_features`); computed here otherwise.

    The input path (:mod:`ssl_lib.finetune_feed`): slices and labels go to the device once, every
    random draw (epoch order, flips, the MONAI flip + rotation's per-sample parameters) comes from
    one generator on the device seeded with ``seed``, and with ``prefetch`` each batch is prepared
    one step ahead (on CUDA on a side stream; the results are the same without). The run holds
    PyTorch's numerics flags as :func:`ssl_lib.torch_flags.run_flags` says for the device (CPU:
    deterministic; CUDA: cuDNN autotuning) and restores them afterwards.
    """
    prof = get_profile(profile)
    device = torch.device(device)
    if prof.augment not in AUGMENTS:
        raise ValueError(f"unknown fine-tuning augmentation {prof.augment!r}; choose one of {AUGMENTS}")
    if frozen is not None and not prof.cached_features:
        raise ValueError(f"profile {prof.name!r} trains its linear phase on augmented batches (augment="
                         f"{prof.augment!r}, train_bn_frozen={prof.train_bn_frozen}); pass no frozen features")
    with torch_flags(**run_flags(device)):
        return _fit(model, train_x, train_y, val_x, val_y, prof, mean=mean, std=std, seed=seed, device=device,
                    progress=progress, frozen=frozen, prefetch=prefetch)


def _fit(model: Classifier, train_x, train_y, val_x, val_y, prof: FinetuneProfile, *, mean: float, std: float,
         seed: int, device: torch.device, progress: bool, frozen: FrozenFeatures | None, prefetch: bool) -> FitResult:
    gen = torch.Generator(device=device).manual_seed(int(seed))
    model.to(device)
    cl, precision = device_options(prof, device)
    if cl:
        model.to(memory_format=torch.channels_last)
    bn_params = [p for m in model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False)] if prof.train_bn_frozen else []
    bn_ids = {id(p) for p in bn_params}
    head_params = list(model.head.parameters()) + bn_params  # Lightning: BN trains with the head from the start
    bb_params = [p for p in model.backbone.parameters() if id(p) not in bn_ids]
    opt = torch.optim.Adam([{"params": head_params}, {"params": bb_params}], lr=prof.lr, weight_decay=prof.weight_decay)
    augment = FlipRotate() if prof.augment == "monai" else None
    flip = prof.augment == "flip"
    x_tr, y_tr = to_device(train_x, device), to_device(train_y, device)  # once: batches are indexed on the device
    val_x, y_va = to_device(val_x, device), val_y.numpy()
    feed = Prefetcher(device, prefetch)
    rows: list[dict] = []
    best_key, best_state, best_epoch, best_val = None, None, -1, {}
    bar = _progress(prof.epochs, progress, "fine-tune")

    def images(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch ready for the network: prepared images ``(B, 3, H, W)`` and labels ``(B,)``."""
        x = prepare_images(x_tr[idx], mean=mean, std=std, device=device, channels_last=cl, flip=flip,
                           augment=augment, generator=gen)
        return x, y_tr[idx]

    def epoch_batches(n: int) -> list[torch.Tensor]:
        return shuffled_batches(n, prof.batch_size, gen)

    def _record(epoch: int, phase: str, loss: float, probs: np.ndarray, bb_lr: float, t0: float):
        nonlocal best_key, best_state, best_epoch, best_val
        row = {"epoch": epoch, "phase": phase, "train_loss": loss, **_val_row(probs, y_va, _nll(probs, y_va)),
               "lr_backbone": bb_lr, "time_s": time.perf_counter() - t0}
        rows.append(row)
        metric = row[f"val_{prof.select_metric}"]
        key = (-math.inf if np.isnan(metric) else metric, -row["val_loss"])
        if best_key is None or key > best_key:
            best_key, best_epoch, best_val = key, epoch, row
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{metric:.3f}")

    # ---- phase 1 (authors' profile): backbone frozen but for BN, on every augmented batch
    if prof.linear_epochs > 0 and not prof.cached_features:
        for p in bb_params:
            p.requires_grad_(False)
        opt.param_groups[0]["lr"] = prof.lr if prof.linear_lr is None else prof.linear_lr
        for epoch in range(prof.linear_epochs):
            t0 = time.perf_counter()
            model.head.train()
            model.backbone.train(prof.train_bn_frozen)  # BN layers in train mode, as train_bn=True
            total, n = torch.zeros((), device=device), 0
            for x, y in feed(epoch_batches(len(x_tr)), images):
                with autocast(device, precision), torch.set_grad_enabled(prof.train_bn_frozen):
                    feats = model.backbone(x)
                with autocast(device, precision):
                    loss = F.cross_entropy(model.head(feats), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, n = total + loss.detach() * len(y), n + len(y)
            probs = predict_proba(model, val_x, mean, std, batch_size=prof.eval_batch_size, device=device,
                                  channels_last=cl, precision=precision)
            _record(epoch, "linear", float(total) / max(n, 1), probs, 0.0, t0)
        for p in bb_params:
            p.requires_grad_(True)

    # ---- phase 1: linear layer only, on cached features of the frozen (eval-mode) backbone
    elif prof.linear_epochs > 0:
        t0 = time.perf_counter()
        for p in bb_params:
            p.requires_grad_(False)
        if frozen is None:
            frozen = FrozenFeatures(
                _features(model.backbone, x_tr, mean, std, prof.eval_batch_size, device, cl, precision=precision),
                _features(model.backbone, x_tr, mean, std, prof.eval_batch_size, device, cl, flip=True,
                          precision=precision) if flip else None,
                _features(model.backbone, val_x, mean, std, prof.eval_batch_size, device, cl, precision=precision))
        f0, f1, fv = frozen.train, frozen.train_flipped, frozen.val
        if flip != (f1 is not None) or len(f0) != len(train_x) or len(fv) != len(val_x):
            raise ValueError("frozen features do not match the training/validation slices or the augmentation")

        def features(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """A batch of cached features ``(B, D)`` (each the mirror image's with p 0.5 when flipping) and labels."""
            feats = f0[idx]
            if f1 is not None:
                feats = torch.where(random_mask(len(idx), gen, feats.device)[:, None], f1[idx], feats)
            return feats, y_tr[idx]

        opt.param_groups[0]["lr"] = prof.lr if prof.linear_lr is None else prof.linear_lr
        for epoch in range(prof.linear_epochs):
            model.head.train()
            total, n = torch.zeros((), device=device), 0
            for feats, y in feed(epoch_batches(len(f0)), features):
                loss = F.cross_entropy(model.head(feats), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, n = total + loss.detach() * len(y), n + len(y)
            with torch.inference_mode():
                probs = torch.softmax(model.head(fv), 1).cpu().numpy().astype(np.float64)
            _record(epoch, "linear", float(total) / max(n, 1), probs, 0.0, t0)  # one sync per epoch
            t0 = time.perf_counter()
        for p in bb_params:
            p.requires_grad_(True)

    # ---- phase 2: the whole model
    opt.param_groups[0]["lr"] = prof.lr
    bb_lr = prof.lr if prof.backbone_lr_ratio is None else prof.lr * prof.backbone_lr_ratio
    for k in range(prof.full_epochs):
        t0 = time.perf_counter()
        epoch = prof.linear_epochs + k
        opt.param_groups[1]["lr"] = bb_lr
        model.train()
        total, n = torch.zeros((), device=device), 0
        for x, y in feed(epoch_batches(len(x_tr)), images):
            loss = optimizer_step(model, opt, x, y, device=device, precision=precision)
            total, n = total + loss * len(y), n + len(y)
        probs = predict_proba(model, val_x, mean, std, batch_size=prof.eval_batch_size, device=device, channels_last=cl,
                              precision=precision)
        _record(epoch, "full", float(total) / max(n, 1), probs, bb_lr, t0)  # one sync per epoch
        bb_lr = min(prof.lr, bb_lr * prof.backbone_lr_growth)
    if bar is not None:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    if cl:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return FitResult(model, best_epoch, pd.DataFrame(rows), best_val)


def _progress(total: int, show: bool, desc: str):
    """A progress bar: a widget for a person in JupyterLab, plain text in a batch run (the runner,
    papermill's command line: :func:`ssl_lib.widgets.batch_run`), where a widget would be stored
    in the executed notebook as a placeholder frozen at its first value."""
    if not show:
        return None
    from .widgets import batch_run

    if batch_run():
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False)


# --------------------------------------------------------------------------- one run
def _resolve_init(init: str | EncoderInit, output_dir, arch: str, pretrain_epoch) -> EncoderInit:
    if isinstance(init, EncoderInit):
        return init
    return load_init(init, output_dir, arch, epoch=pretrain_epoch)


def finetune_run(output_dir: str | os.PathLike, task: str | TaskSpec, init: str | EncoderInit = "random", *,
                 fraction: float = 1.0, seed: int = 0, profile: str | FinetuneProfile = "quick",
                 fold: int | None = None, pretrain_epoch: int | str | None = None, data: TaskData | None = None,
                 device: str | torch.device = "cpu", save: bool = True, record: bool = True,
                 save_model: bool = True, progress: bool = False, features: FeatureCache | None = None) -> dict:
    """One fine-tuning run: train on the (reduced) training split, select on val, test once.

    ``init``: ``"random"``, a method name (our encoder at ``pretrain_epoch``, default the last),
    ``"imagenet"`` (the study's ImageNet weights), a released checkpoint path, or an :class:`EncoderInit`. With ``save`` curves/predictions (and
    with ``save_model`` the model) are written and (with ``record``) the row is appended to the
    results CSV. ``features``: the :class:`FeatureCache` whose frozen-backbone features this run
    reuses and adds to (``None``: computed for this run only). Returns the row
    (plus ``"_fit"``: the :class:`FitResult` and ``"_probs"``: test probabilities, not written).
    """
    prof = get_profile(profile)
    spec = get_task(task)
    data = data or load_task_data(output_dir, spec, prof.image_size)
    t_start = time.perf_counter()
    split: Split = task_splits(data.store, spec, seed=seed, fold=fold)
    labels = data.store.labels
    train_idx = reduce_indices(split.train, labels[split.train], fraction, seed, split.fold)
    # normalisation from the training split only (every fraction of a split shares it, and so
    # the cached frozen features); validation and test slices never enter a fitted quantity
    data = data.normalised_by(split.train)
    enc = _resolve_init(init, output_dir, prof.arch, pretrain_epoch)
    torch.manual_seed(int(seed))
    model = apply_init(Classifier(prof.arch, spec.num_classes), enc)
    t = torch.from_numpy
    frozen = None
    if prof.linear_epochs > 0 and prof.cached_features:  # the frozen backbone's features, shared between runs
        cl, _ = device_options(prof, torch.device(device))
        model.to(device)
        if cl:
            model.to(memory_format=torch.channels_last)
        frozen = frozen_features(model.backbone, data, prof, train_idx, split.val, device, cache=features)
    result = fit(model, data.images[t(train_idx)], data.labels[t(train_idx)], data.images[t(split.val)],
                 data.labels[t(split.val)], prof, mean=data.mean, std=data.std, seed=seed, device=device,
                 progress=progress, frozen=frozen)
    probs = predict_proba(result.model, data.images[t(split.test)], data.mean, data.std,
                          batch_size=prof.eval_batch_size, device=device, precision=device_options(prof, device)[1])
    y_test = labels[split.test]
    metrics = compute_metrics(y_test, probs, seed_variant=spec.seed_f1)
    row = {
        "task": spec.name, "init": enc.name, "pretrain_epoch": enc.epoch if enc.epoch is not None else -1,
        "fraction": float(fraction), "seed": int(seed), "fold": int(split.fold), "best_epoch": result.best_epoch,
        **metrics, **{k: result.val_metrics.get(k) for k in ("val_accuracy", "val_auc", "val_f1")},
        "train_size": len(train_idx), "train_per_class": json.dumps(class_counts(labels[train_idx], spec.num_classes)),
        "val_size": len(split.val), "test_size": len(split.test), "time_s": round(time.perf_counter() - t_start, 3),
        "profile": prof.name, "arch": prof.arch, "image_size": data.image_size, "synthetic": data.synthetic,
    }
    if save:
        _save_run(output_dir, spec, enc.name, fraction, seed, split, result, probs, y_test, data, row, prof,
                  save_model)
        if record:
            append_result(StudyPaths(output_dir).results, row)
    return row | {"_fit": result, "_probs": probs}


def _save_run(output_dir, spec, init_name, fraction, seed, split, result, probs, y_test, data, row, prof,
              save_model: bool = True) -> None:
    """Write a run's model (with ``save_model``), curves and test predictions (not its results row)."""
    fold = split.fold
    if save_model:
        save_classifier(result.model, run_file(output_dir, "models", spec.name, init_name, fraction, seed, fold),
                        task=spec.name, init=init_name, fraction=float(fraction), seed=int(seed), fold=int(fold),
                        mean=data.mean, std=data.std, image_size=data.image_size,
                        class_names=list(spec.class_names), profile=prof.name, pretrain_epoch=row["pretrain_epoch"])
    run = dict(task=spec.name, init=init_name, fraction=float(fraction), seed=int(seed), fold=int(fold))
    write_curves(run_file(output_dir, "curves", spec.name, init_name, fraction, seed, fold), result.curves, **run)
    write_predictions(run_file(output_dir, "predictions", spec.name, init_name, fraction, seed, fold), split.test,
                      y_test, probs)


# --------------------------------------------------------------------------- pre-training epoch
def select_pretrain_epoch(output_dir: str | os.PathLike, task: str | TaskSpec, method: str,
                          profile: str | FinetuneProfile = "quick", *, epochs: Sequence[int] | None = None,
                          seed: int = 0, data: TaskData | None = None, device="cpu", progress: bool = False,
                          features: FeatureCache | None = None) -> int:
    """Pick the pre-training epoch of ``method`` with the best *validation* F1 on ``task``.

    Fine-tunes on the full training split from each exported encoder epoch (or ``epochs``); the
    paper evaluates every 50th of 900 epochs and keeps the best (it picked on test F1; we pick
    on validation F1 so the test set stays untouched). Results are cached in
    ``finetune/epoch_selection.csv`` (one row per evaluated epoch, ``chosen`` marks the pick).
    ``features``: the :class:`FeatureCache` its runs share (a grid's own, so that its later runs of
    the chosen epoch reuse the features).
    """
    prof = get_profile(profile)
    spec = get_task(task)
    path = StudyPaths(output_dir).finetune / "epoch_selection.csv"
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if not old.empty:
        hit = old[(old["task"] == spec.name) & (old["method"] == method) & (old["profile"] == prof.name) & old["chosen"]]
        if len(hit):
            return int(hit["pretrain_epoch"].iloc[0])
    epochs = list(epochs) if epochs is not None else list_encoder_epochs(output_dir, method)
    if not epochs:
        raise InitError(f"{StudyPaths(output_dir).pretrain(method)}: no exported encoders to choose from")
    data = data or load_task_data(output_dir, spec, prof.image_size)
    rows = []
    for ep in epochs:
        row = finetune_run(output_dir, spec, method, seed=seed, profile=prof, pretrain_epoch=ep, data=data,
                           device=device, save=False, progress=progress, features=features)
        rows.append({"task": spec.name, "method": method, "pretrain_epoch": ep, "profile": prof.name,
                     "val_f1": row["val_f1"], "val_auc": row["val_auc"], "val_accuracy": row["val_accuracy"]})
    new = pd.DataFrame(rows)
    best = int(new.loc[new["val_f1"].fillna(-1).idxmax(), "pretrain_epoch"])
    new["chosen"] = new["pretrain_epoch"] == best
    with atomic_path(path) as tmp:
        pd.concat([old, new], ignore_index=True).to_csv(tmp, index=False)
    return best


# --------------------------------------------------------------------------- the grid
def init_name(init: str | os.PathLike, output_dir: str | os.PathLike | None = None, arch: str = "resnet50") -> str:
    """The name an init gets in the results table (a released checkpoint: ``<method>-released``)."""
    s = str(init)
    if Path(s).suffix in (".pt", ".pth", ".ckpt", ".tar") or Path(s).is_file() or (
            output_dir is not None and Path(output_dir).is_file()):
        return load_init(s, output_dir, arch).name
    return s


def default_inits(output_dir: str | os.PathLike) -> list[str]:
    """The study's inits in display order: ``random``, ``imagenet`` when the study holds ImageNet
    weights (:func:`ssl_lib.inits.use_imagenet_weights`), then every method with exported encoders."""
    return ["random"] + ([IMAGENET] if has_imagenet(output_dir) else []) + available_methods(output_dir)


def resolve_workers(workers: int | str, device: str | torch.device = "cpu") -> int:
    """Worker processes of :func:`run_grid`: an int as given, ``"auto"``: 1 on CUDA, else up to 4 (one per thread)."""
    if workers == "auto":
        return 1 if torch.device(device).type == "cuda" else max(1, min(4, torch.get_num_threads()))
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int or 'auto', got {workers!r}")
    return workers


#: A worker process's task data, by (study folder, task, image size): loaded once per worker.
_WORKER_DATA: dict[tuple, TaskData] = {}


def _worker_init(threads: int, parent_pid: int | None = None) -> None:
    """A grid worker: its share of the threads; it dies with the process that started it (a
    killed kernel or study runner leaves no worker behind, see :func:`ssl_lib.procs.die_with_parent`)."""
    import signal

    from .procs import die_with_parent

    if parent_pid is not None:
        die_with_parent(signal.SIGKILL, parent_pid)
    torch.set_num_threads(threads)


def _grid_group(output_dir: str, prof: FinetuneProfile, device: str, jobs: list[dict],
                features: FeatureCache) -> list[dict]:
    """Runs of one (task, init) in a worker process: files written, results rows returned (not appended).

    ``features``: the grid's cache as it arrives in the worker, empty (:class:`FeatureCache` is
    not copied between processes): the group's runs share it.
    """
    rows = []
    for j in jobs:
        key = (output_dir, j["task"], prof.image_size)
        if key not in _WORKER_DATA:
            _WORKER_DATA.clear()  # one task's slices at a time
            _WORKER_DATA[key] = load_task_data(output_dir, j["task"], prof.image_size)
        row = finetune_run(output_dir, j["task"], j["init"], fraction=j["fraction"], seed=j["seed"], profile=prof,
                           pretrain_epoch=j["pretrain_epoch"], data=_WORKER_DATA[key], device=device, save=True,
                           record=False, save_model=j["save_model"], features=features)
        rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    return rows


def _run_parallel(groups: list[list[dict]], output_dir, prof: FinetuneProfile, device, n_workers: int,
                  on_done, features: FeatureCache) -> None:
    """Run each group of jobs on one of ``n_workers`` processes (threads split evenly); ``on_done(job, row)`` here.

    Workers are forked on Linux CPUs (instant, nothing re-imported, no ``__main__`` guard needed
    in scripts); elsewhere, and with CUDA (which does not survive a fork), they are spawned.
    """
    import multiprocessing
    import sys

    fork = sys.platform.startswith("linux") and torch.device(device).type != "cuda"
    threads = max(1, torch.get_num_threads() // n_workers)
    with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork" if fork else "spawn"),
                             initializer=_worker_init, initargs=(threads, os.getpid())) as pool:
        futures = {pool.submit(_grid_group, str(output_dir), prof, str(device), g, features): g for g in groups}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    for job, row in zip(futures[fut], fut.result()):  # re-raises a worker's error here
                        on_done(job, row)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def run_grid(output_dir: str | os.PathLike, tasks: Iterable[str] | None = None, inits: Iterable[str] | None = None,
             fractions: Sequence[float] | dict | None = None, seeds: Sequence[int] | None = None,
             profile: str | FinetuneProfile = "quick", *, stop_f1: float | None | str = "profile",
             pretrain_epoch: str | int | None = None, device="cpu", workers: int | str = 1,
             progress: bool = True, executor=None, features: FeatureCache | None = None) -> pd.DataFrame:
    """Fine-tune every task x init x fraction x seed (the paper's reduction study), resumably.

    Runs whose key (task, init, fraction, seed, fold, profile) is already in the results CSV
    are not recomputed. With ``stop_f1`` (default: the profile's) fractions run from large to
    small and a task stops reducing once every pre-training method's mean test F1 (the profile's
    ``stop_metric`` column) is below it (the baselines, random and ImageNet, do not count).
    ``pretrain_epoch``: ``"last"``, ``"best"`` (:func:`select_pretrain_epoch`) or an int (default:
    the profile's). ``workers``: processes running side by side (``"auto"``:
    :func:`resolve_workers`); each takes all runs of one task and init (of one seed for a
    random init), which share the frozen features, largest first; their rows are appended
    here as each group finishes. ``executor``: a :class:`ssl_lib.cluster.GridExecutor` runs the
    pending runs as cluster jobs instead (``workers`` is then unused). ``features``: the grid's
    :class:`FeatureCache` (``None``: a new one, owned by this call; each group of runs on a worker
    process gets an empty copy of it, each cluster job one of its own). Returns this profile's rows
    of the results table.
    """
    prof = get_profile(profile)
    tasks = task_names(tasks, output_dir)  # None: the study's tasks (<output>/tasks.json), else the paper's
    inits = list(inits) if inits is not None else default_inits(output_dir)
    seeds = list(seeds) if seeds is not None else list(prof.seeds)
    stop = prof.stop_f1 if stop_f1 == "profile" else stop_f1
    choose = pretrain_epoch if pretrain_epoch is not None else prof.pretrain_epoch
    n_workers = resolve_workers(workers, device)
    features = features if features is not None else FeatureCache()

    def fractions_of(task: str) -> list[float]:
        f = fractions.get(task, prof.fractions_for(task)) if isinstance(fractions, dict) else (
            fractions if fractions is not None else prof.fractions_for(task))
        return sorted({float(x) for x in f}, reverse=True)

    plan = {t: fractions_of(t) for t in tasks}
    done = read_results(output_dir, prof.name)
    done_keys = {tuple(r) for r in done[RUN_KEY].itertuples(index=False, name=None)} if len(done) else set()
    bar = _progress(sum(len(f) for f in plan.values()) * len(inits) * len(seeds), progress, f"grid ({prof.name})")
    epochs: dict[tuple[str, str], int | str | None] = {}
    names = {i: init_name(i, output_dir, prof.arch) for i in inits}  # as in the results table
    loaded: dict[str, TaskData] = {}  # this process's task data (serial runs, epoch selection)

    def task_data(t: str) -> TaskData:
        if t not in loaded:
            loaded.clear()  # one task's slices in memory at a time
            loaded[t] = load_task_data(output_dir, t, prof.image_size)
        return loaded[t]

    def epoch_of(t: str, i: str):
        if (t, i) not in epochs:
            epochs[(t, i)] = (None if i in BASELINE_INITS or names[i] != i
                              else select_pretrain_epoch(output_dir, t, i, prof, data=task_data(t), device=device,
                                                         features=features)
                              if choose == "best" else choose)
        return epochs[(t, i)]

    def on_done(job: dict, row: dict | None = None) -> None:  # row None: merged already (executor)
        if row is not None:
            append_result(StudyPaths(output_dir).results, row)
        done_keys.add(job["key"])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(task=job["task"], init=job["init"], fraction=job["fraction"], seed=job["seed"])

    def execute(jobs: list[dict]) -> None:
        if bar is not None:
            bar.update(sum(j["key"] in done_keys for j in jobs))
        jobs = [j for j in jobs if j["key"] not in done_keys]
        for j in jobs:
            j["pretrain_epoch"] = epoch_of(j["task"], j["init"])
        # groups that share frozen features (one task and backbone), largest first so that no
        # worker is left with a long group at the end; within a group, large fractions first
        size = {t: _num_slices(output_dir, t) for t in {j["task"] for j in jobs}}
        groups: dict[tuple, list[dict]] = {}
        for j in sorted(jobs, key=lambda j: -j["fraction"]):
            groups.setdefault((j["task"], j["init"], j["seed"] if j["init"] == "random" else None), []).append(j)
        ordered = sorted(groups.values(), key=lambda g: -sum(size[j["task"]] * j["fraction"] for j in g))
        if executor is not None:
            executor.run(ordered, output_dir, prof, device, on_done)
            return
        if min(n_workers, len(ordered)) > 1:
            _run_parallel(ordered, output_dir, prof, device, min(n_workers, len(ordered)), on_done, features)
            return
        jobs = [j for g in sorted(ordered, key=lambda g: g[0]["task"]) for j in g]  # one task in memory at a time
        for j in jobs:
            row = finetune_run(output_dir, j["task"], j["init"], fraction=j["fraction"], seed=j["seed"], profile=prof,
                               pretrain_epoch=j["pretrain_epoch"], data=task_data(j["task"]), device=device,
                               save=True, record=False, save_model=j["save_model"], features=features)
            on_done(j, {k: v for k, v in row.items() if not k.startswith("_")})

    if prof.keep_models not in ("first", "all"):
        raise ValueError(f"keep_models must be 'first' or 'all', got {prof.keep_models!r}")

    def job(t: str, f: float, i: str, s: int) -> dict:
        keep = prof.keep_models == "all" or (f == plan[t][0] and s == seeds[0])
        return {"task": t, "init": i, "fraction": f, "seed": s, "key": (t, names[i], f, s, fold_of(t, s), prof.name),
                "save_model": keep}

    if stop is None:  # no stopping rule: every run is known up front, one batch
        execute([job(t, f, i, s) for t in tasks for f in plan[t] for i in inits for s in seeds])
    else:
        for t in tasks:
            for f in plan[t]:
                execute([job(t, f, i, s) for i in inits for s in seeds])
                if stop_reducing(read_results(output_dir, prof.name), t, f, inits=names.values(), threshold=stop,
                                 metric=prof.stop_metric):
                    if bar is not None:
                        bar.update(len(inits) * len(seeds) * (len(plan[t]) - plan[t].index(f) - 1))
                    break
    if bar is not None:
        bar.close()
    return read_results(output_dir, prof.name)


def _num_slices(output_dir, task: str) -> int:
    """Slices in a task's store (a run's cost grows with it); 0 if the store is missing."""
    try:
        return int(SliceStore(task_store_path(output_dir, task)).meta.get("num_slices", 0))
    except Exception:  # noqa: BLE001 - only an ordering hint; loading the task reports the real error
        return 0
