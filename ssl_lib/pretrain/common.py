"""What the four pre-training methods share: profiles, the Lightning base module, the loop, export.

Wolf et al. 2023 pre-train a ResNet50 for 900 epochs on 244,527 LIDC-IDRI slices with BYOL,
SwAV, MoCo v2 (Lightning Bolts) and SparK (official code), with the hyperparameters of their
Supplementary Tables 4-7. Here every method is one :class:`PretrainModule` subclass
(``byol.py``, ``mocov2.py``, ``swav.py``, ``spark.py``) of the same shape:

- the backbone is a stock torchvision ResNet from :func:`ssl_lib.models.build_backbone`;
- :meth:`PretrainModule.training_step` takes the uint8 batch ``(B, 1, H, W)`` of the slice
  store loader, normalises it with :func:`ssl_lib.data.store.normalize_batch` (one channel),
  augments it on the module's device (:mod:`ssl_lib.augment`), repeats the grey channel to 3
  (as the paper does, so the exported encoder loads into a stock ``torchvision.models.resnet50``)
  and logs the loss;
- random numbers for augmentations and masks come from a generator seeded by
  ``(seed, global step, rank)``, so a resumed run draws exactly what an uninterrupted one draws;
- ``configure_optimizers``: the method's optimizer with a per-step linear warm-up + cosine
  schedule, over the *planned* number of steps (``epochs x steps per epoch``).

:func:`pretrain` runs a method on a store with Lightning and writes, under ``out_dir``::

    checkpoints/last.ckpt                    every ``every_n_epochs`` and at the end (atomic;
                                             epoch_XXXX.ckpt too with ``keep_checkpoints="all"``)
    encoders/epoch_XXXX.pt + .json           the encoder (torchvision state dict, no fc) + card
    metrics.csv                              per epoch: epoch, step, loss, lr, images_per_s, seconds
    steps.csv                                per step: epoch, step, loss, lr

``XXXX`` counts completed epochs. ``resume=True`` continues from ``checkpoints/last.ckpt``
(optimizer, schedule, MoCo queue, momentum encoders, epoch and step restored).

Multi-GPU / multi-node: ``devices`` x ``num_nodes`` > 1 selects Lightning DDP (``ddp``, or
``ddp_notebook`` inside Jupyter). Each rank reads its own shard of the store (a
``DistributedSampler`` seeded by ``seed``, also used for one process so that the epoch order is
a function of ``(seed, epoch)``); the batch size is per rank. What must be global is made global:
MoCo v2 gathers keys from all ranks before it enqueues them and shuffles the key batch across
ranks (shuffle-BN, as MoCo does instead of SyncBatchNorm); SwAV's Sinkhorn sums over all ranks;
BYOL and SwAV convert their batch norms to SyncBatchNorm on GPUs (``sync_batchnorm`` in their
profiles; PyTorch has no SyncBatchNorm on CPU, so CPU DDP keeps per-rank BN); SparK's masked
batch norm keeps per-rank statistics.

GPU path (every profile, resolved per accelerator by :func:`resolve_device_options`): on CUDA
bf16-mixed precision (Lightning AMP), channels-last weights and views, persistent loader
workers with pinned memory, and no host-device sync per step (the loss stays on the device
until the epoch ends; the progress bar shows it only on the CPU); ``compile=True`` adds
``torch.compile`` of the encoder. On the CPU: float32, contiguous, no workers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightly.models.utils import get_weight_decay_parameters
from torch import nn

from ..augment import ViewTransform
from ..console import quiet_lightning
from ..data.store import SliceStore, StoreError, normalize_batch
from ..models.backbone import build_backbone, encoder_state_dict
from ..precision import is_cuda, resolve_channels_last, resolve_precision

METHODS = ("byol", "swav", "mocov2", "spark")


class PretrainError(ValueError):
    """Bad pre-training input (unknown method/profile, store too small, ...)."""


# ==============================================================================================
# Profiles: the paper's Supplementary Tables 4-7 as ``paper``, scaled-down ``quick``/``smoke``
# ==============================================================================================
@dataclass(frozen=True)
class PretrainConfig:
    """Settings shared by all methods (sizes in pixels; ``batch_size`` per device).

    ``store_size``: the store image side the profile is meant for (paper: 512, the LIDC slices;
    it only sizes the benchmark's generated store). ``crop_size``/``crop_scale``: the random
    resized crops. ``blur_p``: blur probability per view; ``blur_sigma`` in pixels of the crop.
    ``warmup_epochs``: linear warm-up, then cosine decay to zero over the run.

    The GPU path (defaults suit every profile; ``None``/``"auto"`` are resolved by :func:`pretrain`
    for the accelerator, see :mod:`ssl_lib.precision`): ``precision`` (Lightning's name; ``"auto"``:
    ``"bf16-mixed"`` on CUDA, ``"32-true"`` on the CPU), ``channels_last`` (backbone weights and
    input views in channels-last memory format; ``None``: on CUDA only), ``compile``
    (``torch.compile`` of the exported backbone, off by default), ``num_workers`` (loader worker
    processes; ``None``: up to 8 per device on CUDA, 0 on the CPU) and ``pin_memory`` (``None``:
    on CUDA only).

    ``keep_checkpoints``: ``"last"`` keeps only ``checkpoints/last.ckpt`` (what resume continues
    from; with optimizer state, ~3x the encoder) - later steps read the exported encoders of every
    checkpoint epoch, never the per-epoch checkpoints; ``"all"`` also keeps
    ``checkpoints/epoch_XXXX.ckpt`` of every checkpoint epoch.
    """

    method: str = ""
    arch: str = "resnet50"
    store_size: int = 512
    epochs: int = 900
    batch_size: int = 64
    every_n_epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    warmup_epochs: int = 0
    crop_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_p: float = 0.5
    blur_p: tuple[float, ...] = (0.5, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    sync_batchnorm: bool = False
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    num_workers: int | None = None
    pin_memory: bool | None = None
    keep_checkpoints: str = "last"

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class BYOLConfig(PretrainConfig):
    """BYOL (Grill et al. 2020), paper Table 6: 2 crops 224, flip, blur; LARS lr 1e-3, wd 1.5e-6, batch 64.

    Heads as BYOL/Bolts: projector 2048-4096-256, predictor 256-4096-256; target momentum
    follows a cosine from ``momentum_start`` = 0.996 to ``momentum_end`` = 1 over the run (BYOL
    and the Bolts ``BYOLMAWeightUpdate`` the authors ran). Loss as BYOL/Bolts: the sum over both
    directions of ``2 - 2 cos`` (``loss_scale`` = 4 times the mean negative cosine of the two
    directions; only the gradient scale matters). Blur as BYOL: always on view 1, 10 % on view 2.
    """

    method: str = "byol"
    weight_decay: float = 1.5e-6
    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096
    momentum_start: float = 0.996
    momentum_end: float = 1.0
    loss_scale: float = 4.0
    blur_p: tuple[float, ...] = (1.0, 0.1)
    sync_batchnorm: bool = True


@dataclass(frozen=True)
class MoCoConfig(PretrainConfig):
    """MoCo v2 (Chen et al. 2020), paper Table 4: 2 crops 224, flip, blur; SGD lr 1e-4, momentum 0.9, batch 64.

    MLP head 2048-2048-128, queue of 65,536 keys, temperature 0.2, key-encoder momentum 0.999,
    weight decay 1e-4 (MoCo v2/Bolts defaults; the table lists none).
    """

    method: str = "mocov2"
    proj_hidden: int = 2048
    proj_dim: int = 128
    queue_size: int = 65536
    temperature: float = 0.2
    encoder_momentum: float = 0.999
    weight_decay: float = 1e-4
    crop_scale: tuple[float, float] = (0.2, 1.0)


@dataclass(frozen=True)
class SwAVConfig(PretrainConfig):
    """SwAV (Caron et al. 2020), paper Table 5: 2 x 224 (scale 0.9-1) + 6 x 96 (0.1-0.33), blur, crop.

    LARS lr 0.15, wd 1e-6, batch 128; 500 prototypes frozen for the first 313 steps; 3 Sinkhorn
    iterations (epsilon 0.05, temperature 0.1); projector 2048-2048-128; prototypes without bias
    (SwAV's code). Table 5 lists no flip, so the paper profile has ``flip_p = 0``. LARS adapts and
    decays every parameter, norms and biases included (``exclude_norm_bias = False``: SwAV's LARC
    and the authors' Bolts default).
    """

    method: str = "swav"
    batch_size: int = 128
    lr: float = 0.15
    weight_decay: float = 1e-6
    warmup_epochs: int = 10
    crop_scale: tuple[float, float] = (0.9, 1.0)
    flip_p: float = 0.0
    proj_hidden: int = 2048
    proj_dim: int = 128
    n_prototypes: int = 500
    frozen_prototype_steps: int = 313
    sinkhorn_iterations: int = 3
    sinkhorn_epsilon: float = 0.05
    temperature: float = 0.1
    n_small: int = 6
    small_size: int = 96
    small_scale: tuple[float, float] = (0.1, 0.33)
    sync_batchnorm: bool = True
    exclude_norm_bias: bool = False


@dataclass(frozen=True)
class SparKConfig(PretrainConfig):
    """SparK (Tian et al. 2023), paper Table 7: input 512, patch 32, mask 60 %, flip + crop, batch 32.

    Peak lr 2.5e-5 (Table 7 writes "25e-6"; it equals SparK's base lr 2e-4 x 32 / 256). What the
    paper does not state follows the official SparK code the authors ran (``pretrain/main.py``,
    ``utils/lr_control.py``, ``utils/arg_util.py``, ``models/__init__.py``): LAMB (timm) with
    betas 0.9/0.95 and the global gradient norm clipped at ``grad_clip`` = 5; the lr warms up
    linearly from ``lr_start`` = 0.005 x peak over ``warmup_epochs`` = 40, then follows a cosine
    to ``lr_end`` = 0.001 x peak; the weight decay follows a cosine from ``weight_decay`` = 0.04
    to ``weight_decay_end`` = 0.2 over the run; mask tokens, biases and norm parameters (every
    1-d parameter) are out of weight decay; the ResNet-50 trains with drop path
    ``drop_path`` = 0.05; crops are resized ``interpolation`` = bicubic; the decoder is the
    official one (``decoder = "official"``, width 768). SparK pre-trains on its input size, so the
    crop *is* the input: a random resized crop of scale 0.67-1 resized back to 512 in the paper
    profile. ``crop_size`` must be a multiple of 32 (the ResNet's downsampling ratio).
    """

    method: str = "spark"
    batch_size: int = 32
    lr: float = 2.5e-5
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    lr_start: float = 0.005
    lr_end: float = 0.001
    grad_clip: float = 5.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: int = 40
    crop_size: int = 512
    crop_scale: tuple[float, float] = (0.67, 1.0)
    interpolation: str = "bicubic"
    blur_p: tuple[float, ...] = ()
    mask_ratio: float = 0.6
    decoder: str = "official"
    decoder_width: int | None = None
    drop_path: float = 0.05


CONFIG_CLASSES: dict[str, type[PretrainConfig]] = {
    "byol": BYOLConfig, "mocov2": MoCoConfig, "swav": SwAVConfig, "spark": SparKConfig,
}


def _scaled_sigma(crop: int) -> tuple[float, float]:
    """The paper's blur sigma (0.1-2.0 px at 224 px crops), scaled to a crop side."""
    return (0.1 * crop / 224, 2.0 * crop / 224)


#: ``PROFILES[profile][method]``. ``quick`` (64 px store, ResNet18) is tuned so that the four
#: pre-trainings together take about 6 minutes on 2 CPU cores for ~400 slices (measured: BYOL
#: ~100 s, SwAV ~110 s, MoCo v2 ~60 s, SparK ~95 s, on a loaded 2-core machine); ``smoke`` is
#: for tests (32 px, batch 8). Learning rates of ``quick``/``smoke`` are raised so that a few
#: hundred steps move the weights at all (the paper's are for 900 epochs of 244k slices).
PROFILES: dict[str, dict[str, PretrainConfig]] = {
    "paper": {
        "byol": BYOLConfig(warmup_epochs=10),
        "mocov2": MoCoConfig(lr=1e-4),
        "swav": SwAVConfig(),
        # channels-last also on the CPU: a ResNet-50 SparK step at 224 px ran ~20 % faster (2 threads)
        "spark": SparKConfig(channels_last=True),
    },
    "quick": {
        "byol": BYOLConfig(arch="resnet18", store_size=64, epochs=6, batch_size=32, every_n_epochs=3,
                           lr=0.2, weight_decay=1.5e-6, warmup_epochs=1, crop_size=64,
                           blur_sigma=_scaled_sigma(64), proj_hidden=1024, pred_hidden=1024, proj_dim=128,
                           momentum_start=0.99, loss_scale=1.0),
        "mocov2": MoCoConfig(arch="resnet18", store_size=64, epochs=8, batch_size=32, every_n_epochs=4,
                             lr=0.06, crop_size=64, blur_sigma=_scaled_sigma(64), proj_hidden=512,
                             queue_size=128, encoder_momentum=0.99),
        "swav": SwAVConfig(arch="resnet18", store_size=64, epochs=6, batch_size=32, every_n_epochs=3,
                           lr=0.3, warmup_epochs=1, crop_size=64, small_size=32, n_small=4,
                           blur_sigma=_scaled_sigma(64), proj_hidden=512, n_prototypes=100,
                           frozen_prototype_steps=20, sync_batchnorm=False, exclude_norm_bias=True),
        "spark": SparKConfig(arch="resnet18", store_size=64, epochs=7, batch_size=32, every_n_epochs=4,
                             lr=2e-3, warmup_epochs=1, crop_size=96, decoder="light", drop_path=0.0),
    },
    "smoke": {
        "byol": BYOLConfig(arch="resnet18", store_size=32, epochs=2, batch_size=8, every_n_epochs=1,
                           lr=0.2, warmup_epochs=0, crop_size=32, blur_sigma=_scaled_sigma(32),
                           proj_hidden=256, pred_hidden=256, proj_dim=64, momentum_start=0.99, loss_scale=1.0),
        "mocov2": MoCoConfig(arch="resnet18", store_size=32, epochs=2, batch_size=8, every_n_epochs=1,
                             lr=0.03, crop_size=32, blur_sigma=_scaled_sigma(32), proj_hidden=256,
                             proj_dim=64, queue_size=16, encoder_momentum=0.99),
        "swav": SwAVConfig(arch="resnet18", store_size=32, epochs=2, batch_size=8, every_n_epochs=1,
                           lr=0.3, warmup_epochs=0, crop_size=32, small_size=16, n_small=2,
                           blur_sigma=_scaled_sigma(32), proj_hidden=256, proj_dim=64, n_prototypes=16,
                           frozen_prototype_steps=4, sync_batchnorm=False, exclude_norm_bias=True),
        "spark": SparKConfig(arch="resnet18", store_size=32, epochs=2, batch_size=8, every_n_epochs=1,
                             lr=2e-3, warmup_epochs=0, crop_size=64, decoder_width=64, drop_path=0.0),
    },
}


def get_config(method: str, profile: str = "quick", **overrides: Any) -> PretrainConfig:
    """The profile's config for ``method`` with ``overrides`` (``None`` values are ignored)."""
    if method not in METHODS:
        raise PretrainError(f"unknown pre-training method {method!r}; choose one of {METHODS}")
    if profile not in PROFILES:
        raise PretrainError(f"unknown profile {profile!r}; choose one of {tuple(PROFILES)}")
    cfg = PROFILES[profile][method]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cfg)}
    if unknown:
        raise PretrainError(f"unknown {method} setting(s) {sorted(unknown)}")
    if overrides.get("keep_checkpoints", "last") not in ("last", "all"):
        raise PretrainError(f"keep_checkpoints must be 'last' or 'all', got {overrides['keep_checkpoints']!r}")
    return dataclasses.replace(cfg, **overrides)


# ==============================================================================================
# The base LightningModule
# ==============================================================================================
def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Grey ``(B, 1, H, W)`` -> ``(B, 3, H, W)`` by repeating the channel (a view), as the paper."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """LR factor: linear warm-up over ``warmup_steps``, then cosine from 1 to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class PretrainModule(pl.LightningModule):
    """Base of the four methods (see the module docstring).

    Subclasses set ``config_class``, build their networks in ``__init__`` (the encoder that is
    exported must be reachable as :attr:`encoder`), and implement :meth:`views`,
    :meth:`step_loss`, :meth:`online_modules` and :meth:`make_optimizer`.

    ``mean``/``std``: the store's pixel statistics (of pixels / 255); ``total_steps``: planned
    optimiser steps of the whole run (for the LR and momentum schedules); ``steps_per_epoch``
    converts the warm-up epochs to steps.
    """

    config_class: type[PretrainConfig] = PretrainConfig

    def __init__(self, config: PretrainConfig | dict, mean: float = 0.5, std: float = 0.25, seed: int = 0,
                 total_steps: int = 1000, steps_per_epoch: int = 1, store: str = ""):
        super().__init__()
        cfg = config if isinstance(config, PretrainConfig) else self.config_class.from_dict(config)
        self.cfg = cfg
        self.save_hyperparameters({"config": asdict(cfg), "mean": float(mean), "std": float(std), "seed": int(seed),
                                   "total_steps": int(total_steps), "steps_per_epoch": int(steps_per_epoch),
                                   "store": str(store)})

    # -- what subclasses provide -------------------------------------------------------------
    @property
    def encoder(self) -> nn.Module:
        """The network exported for fine-tuning (online / query / main ResNet)."""
        return self.backbone

    def views(self, x: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Augmented views of a normalised grey batch ``x`` (B, 1, H, W)."""
        raise NotImplementedError

    def step_loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The method's loss for a normalised grey batch ``x`` (B, 1, H, W) (augments inside)."""
        raise NotImplementedError

    def online_modules(self) -> list[nn.Module]:
        """The modules the optimiser trains (momentum/target copies excluded)."""
        raise NotImplementedError

    def make_optimizer(self, param_groups: list[dict]) -> torch.optim.Optimizer:
        raise NotImplementedError

    def check_data(self, num_slices: int, store_path: str) -> None:
        """Raise :class:`PretrainError` if the method cannot train on ``num_slices`` slices."""

    # -- shared machinery --------------------------------------------------------------------
    #: channels-last input views (set by :meth:`use_device_options`)
    channels_last: bool = False

    def use_device_options(self, cuda: bool) -> None:
        """Apply the config's memory format and compile options for a run on CUDA (``cuda``) or the CPU.

        channels-last converts every 4-D weight (backbones, momentum copies, SparK's decoder) and
        makes :meth:`rgb` hand the networks channels-last views; ``compile`` compiles the exported
        encoder in place (``nn.Module.compile``: state-dict keys stay torchvision's).
        """
        self.channels_last = resolve_channels_last("cuda" if cuda else "cpu", self.cfg.channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.cfg.compile:
            self.encoder.compile()

    def rgb(self, x: torch.Tensor) -> torch.Tensor:
        """A grey view ``(B, 1, h, w)`` as the networks' input ``(B, 3, h, w)`` (:func:`to_rgb`, channels-last if set)."""
        x = to_rgb(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def step_generator(self, step: int | None = None) -> torch.Generator:
        """A generator on the module's device seeded by ``(seed, step, rank)``: reproducible draws."""
        step = self.global_step if step is None else step
        rank = self.global_rank if self._trainer is not None else 0
        g = torch.Generator(device=self.device)
        g.manual_seed((int(self.hparams.seed) * 1_000_003 + int(step) * 7919 + rank * 104_729) % (2**62))
        return g

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 1, H, W)`` -> float ``(B, 1, H, W)`` normalised with the store's mean/std."""
        return normalize_batch(images.to(self.device, non_blocking=True), self.hparams.mean, self.hparams.std, channels=1)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0]
        x = self.normalize(images)
        loss = self.step_loss(x, self.step_generator())
        # the progress bar turns its metrics into Python numbers every step (a host-device sync):
        # show the loss there only on the CPU, where that costs nothing
        self.log("loss", loss, on_step=True, on_epoch=True, prog_bar=self.device.type == "cpu", sync_dist=True,
                 batch_size=images.shape[0])
        return loss

    def trainable_parameters(self) -> list[nn.Parameter]:
        seen, out = set(), []
        for m in self.online_modules():
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def param_groups(self) -> list[dict]:
        """Weight-decay and no-decay (norm layers, biases) groups of the online modules (LARS/SimCLR style)."""
        decay, no_decay = get_weight_decay_parameters(self.online_modules())
        return [{"params": decay, "name": "decay"},
                {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.param_groups())
        total = int(self.hparams.total_steps)
        warmup = int(self.cfg.warmup_epochs) * int(self.hparams.steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- previews for notebooks --------------------------------------------------------------
    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, C, H, W)`` -> grey ``(B, 1, H, W)`` in [0, 1] for display."""
        return (x[:, :1].float() * self.hparams.std + self.hparams.mean).clamp(0, 1).cpu()

    @torch.no_grad()
    def preview(self, images: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
        """Named display images ``(B, 1, h, w)`` in [0, 1]: the input and its augmented views."""
        x = self.normalize(images)
        g = self.step_generator(seed)
        out = {"original": self.denormalize(x)}
        for i, v in enumerate(self.views(x, g)):
            out[f"view {i + 1}"] = self.denormalize(v)
        return out


def method_class(method: str) -> type[PretrainModule]:
    """The :class:`PretrainModule` subclass of ``method``."""
    if method not in METHODS:
        raise PretrainError(f"unknown pre-training method {method!r}; choose one of {METHODS}")
    if method == "byol":
        from .byol import BYOL as cls
    elif method == "mocov2":
        from .mocov2 import MoCoV2 as cls
    elif method == "swav":
        from .swav import SwAV as cls
    else:
        from .spark import SparKModule as cls
    return cls


def build_module(method: str, profile: str = "quick", *, mean: float = 0.5, std: float = 0.25, seed: int = 0,
                 total_steps: int = 1000, steps_per_epoch: int = 1, **overrides) -> PretrainModule:
    """A freshly initialised module of ``method`` with the profile's settings."""
    cfg = get_config(method, profile, **overrides)
    return method_class(method)(cfg, mean=mean, std=std, seed=seed, total_steps=total_steps,
                                steps_per_epoch=steps_per_epoch)


# ==============================================================================================
# Data: the store as a LightningDataModule
# ==============================================================================================
def _whole_batch(batch):
    return batch


class StoreDataModule(pl.LightningDataModule):
    """All slices of a store, shuffled per epoch by ``(seed, epoch)``, sharded across DDP ranks.

    Batches are uint8 ``(B, 1, H, W)`` (plus labels, unused) fetched whole from the memory map.
    On a GPU, ``num_workers`` persistent worker processes read ahead into pinned memory
    (``pin_memory``), so the copy to the device overlaps the previous step.
    """

    def __init__(self, store: SliceStore, batch_size: int, seed: int = 0, num_workers: int = 0,
                 pin_memory: bool = False):
        super().__init__()
        self.store, self.batch_size, self.seed, self.num_workers = store, int(batch_size), int(seed), int(num_workers)
        self.pin_memory = bool(pin_memory)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        dataset = self.store.dataset()
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                                      seed=self.seed, drop_last=True)
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                                           collate_fn=_whole_batch, num_workers=self.num_workers,
                                           persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory)


# ==============================================================================================
# Callbacks: atomic checkpoints, encoder export, metrics
# ==============================================================================================
def _atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside the target and renamed into place.

    Lightning's own ``_atomic_save`` goes through an fsspec transaction whose temporary file
    lives in the system temp folder; when that is another file system the final move is a copy,
    which a kill can leave half-written. This writes in the target folder and uses ``os.replace``.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        _atomic_torch_save(checkpoint, Path(path))


def _is_save_epoch(trainer: pl.Trainer, every_n: int) -> bool:
    done = trainer.current_epoch + 1
    final = done >= (trainer.max_epochs or done) or (trainer.max_steps not in (-1, None)
                                                     and trainer.global_step >= trainer.max_steps)
    return done % max(1, every_n) == 0 or final


class EpochCheckpoint(ModelCheckpoint):
    """``last.ckpt`` (what ``resume`` continues from) every ``every_n_epochs`` and at the final
    epoch; with ``keep="all"`` also ``checkpoints/epoch_XXXX.ckpt`` (XXXX = completed epochs) at
    each of them, all kept (``"last"``: none of them, see ``PretrainConfig.keep_checkpoints``)."""

    def __init__(self, dirpath: Path, every_n_epochs: int, keep: str = "last"):
        super().__init__(dirpath=dirpath, filename="epoch_{done:04d}", auto_insert_metric_name=False,
                         save_top_k=-1 if keep == "all" else 0, save_last=True, every_n_epochs=every_n_epochs, save_on_train_epoch_end=True,
                         enable_version_counter=False)
        self.period = every_n_epochs

    def _monitor_candidates(self, trainer):
        out = super()._monitor_candidates(trainer)
        out["done"] = torch.tensor(trainer.current_epoch + 1)
        return out

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._should_skip_saving_checkpoint(trainer) or not _is_save_epoch(trainer, self.period):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)


def encoder_card(module: PretrainModule, epoch: int, profile: str) -> dict:
    cfg = module.cfg
    return {
        "method": cfg.method, "epoch": int(epoch), "global_step": int(module.global_step), "arch": cfg.arch,
        "image_size": int(cfg.crop_size), "channels": 3, "mean": float(module.hparams.mean),
        "std": float(module.hparams.std), "store": module.hparams.store, "profile": profile,
        "precision": cfg.precision,
    }


def export_encoder(module: PretrainModule, out_dir: str | os.PathLike, epoch: int, profile: str = "") -> Path:
    """Write ``encoders/epoch_XXXX.pt`` (torchvision state dict without ``fc``) and its ``.json`` card."""
    folder = Path(out_dir) / "encoders"
    path = folder / f"epoch_{epoch:04d}.pt"
    state = {k: v.contiguous() for k, v in encoder_state_dict(module.encoder).items()}  # not channels-last
    _atomic_torch_save(state, path)
    _atomic_write_text(path.with_suffix(".json"), json.dumps(encoder_card(module, epoch, profile), indent=2))
    return path


class EncoderExport(Callback):
    """Exports the encoder whenever a checkpoint epoch ends, and at the end of training (rank 0)."""

    def __init__(self, out_dir: Path, every_n_epochs: int, profile: str):
        self.out_dir, self.period, self.profile = Path(out_dir), every_n_epochs, profile
        self._last_step = -1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if _is_save_epoch(trainer, self.period):
            self._export(trainer, pl_module, trainer.current_epoch + 1)

    def on_train_end(self, trainer, pl_module) -> None:  # e.g. stopped by max_steps mid-epoch
        if self._last_step != trainer.global_step:
            self._export(trainer, pl_module, trainer.current_epoch)

    def _export(self, trainer, pl_module, epoch: int) -> None:
        self._last_step = trainer.global_step
        if trainer.is_global_zero:
            export_encoder(pl_module, self.out_dir, epoch, self.profile)


class MetricsLog(Callback):
    """``metrics.csv`` (one row per epoch) and ``steps.csv`` (one row per step), rank 0.

    Loss per epoch is the mean over steps and ranks; images/s counts source images of all ranks.
    On resume, rows of epochs not covered by the checkpoint are dropped first. Step losses stay
    on the device until the epoch ends (one host-device sync per epoch, none per step).
    """

    def __init__(self, out_dir: Path, progress: bool = False):
        self.epoch_csv, self.step_csv = Path(out_dir) / "metrics.csv", Path(out_dir) / "steps.csv"
        self.progress = progress

    def on_train_start(self, trainer, pl_module) -> None:  # after a checkpoint is restored
        if trainer.is_global_zero:
            for path, col, limit in ((self.epoch_csv, "epoch", trainer.current_epoch),
                                     (self.step_csv, "step", trainer.global_step)):
                if path.exists():
                    frame = pd.read_csv(path)
                    frame[frame[col] <= limit].to_csv(path, index=False)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0, self._step0, self._rows, self._images = time.perf_counter(), trainer.global_step, [], 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self._images += int(batch[0].shape[0])
        self._rows.append((trainer.current_epoch + 1, trainer.global_step, loss.detach().float().reshape(()), lr))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self._t0
        if self._rows:
            losses = torch.stack([r[2] for r in self._rows]).cpu().tolist()
            self._rows = [(e, s, x, lr) for (e, s, _, lr), x in zip(self._rows, losses)]
        mean = float(np.mean([r[2] for r in self._rows])) if self._rows else float("nan")
        mean = float(trainer.strategy.reduce(torch.tensor(mean, device=pl_module.device), reduce_op="mean"))
        images = self._images * trainer.world_size
        if not trainer.is_global_zero:
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        row = pd.DataFrame([{"epoch": trainer.current_epoch + 1, "step": trainer.global_step, "loss": mean, "lr": lr,
                             "images_per_s": images / max(seconds, 1e-9), "seconds": seconds}])
        row.to_csv(self.epoch_csv, mode="a", header=not self.epoch_csv.exists(), index=False)
        steps = pd.DataFrame(self._rows, columns=["epoch", "step", "loss", "lr"])
        steps.to_csv(self.step_csv, mode="a", header=not self.step_csv.exists(), index=False)
        self._rows = []


# ==============================================================================================
# The entry point
# ==============================================================================================
@dataclass
class PretrainResult:
    """What :func:`pretrain` produced (paths are under ``run_dir``)."""

    method: str
    profile: str
    run_dir: Path
    config: PretrainConfig
    encoders: list[Path]
    metrics: pd.DataFrame
    steps: pd.DataFrame
    trainable_params: int
    total_params: int
    peak_memory_mb: float
    wall_time_s: float
    epochs_done: int
    global_step: int
    module: PretrainModule | None = field(default=None, repr=False)

    @property
    def encoder(self) -> Path | None:
        """The last exported encoder."""
        return self.encoders[-1] if self.encoders else None

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"


def count_parameters(module: PretrainModule) -> dict[str, int]:
    """``trainable``: parameters the optimiser updates; ``momentum``: EMA copies; ``total``: all."""
    trainable = sum(p.numel() for p in module.trainable_parameters())
    total = sum(p.numel() for p in module.parameters())
    encoder = sum(p.numel() for p in module.encoder.parameters())
    return {"trainable": trainable, "momentum": total - trainable, "total": total, "encoder": encoder}


def _peak_memory_mb(device: torch.device | None) -> float:
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak RSS)


def _strategy(world: int, strategy: str | None) -> str:
    if strategy is not None:
        return strategy
    if world <= 1:
        return "auto"
    from lightning.fabric.utilities.imports import _IS_INTERACTIVE

    return "ddp_notebook" if _IS_INTERACTIVE else "ddp"


def resolve_device_options(cfg: PretrainConfig, accelerator: str = "auto", devices: int = 1) -> PretrainConfig:
    """``cfg`` with its ``"auto"``/``None`` GPU-path fields decided for ``accelerator`` (pure but for ``"auto"``).

    CUDA: bf16-mixed, channels-last, pinned memory and ``min(8, CPUs / devices)`` persistent
    loader workers; CPU: 32-true, contiguous, no workers (reading the memory map is fast and
    worker processes would compete with the compute threads).
    """
    cuda = is_cuda(accelerator)
    workers = cfg.num_workers
    if workers is None:
        workers = max(1, min(8, (os.cpu_count() or 1) // max(1, devices))) if cuda else 0
    return dataclasses.replace(
        cfg, precision=resolve_precision(accelerator, cfg.precision),
        channels_last=resolve_channels_last("cuda" if cuda else "cpu", cfg.channels_last),
        num_workers=int(workers), pin_memory=cuda if cfg.pin_memory is None else bool(cfg.pin_memory))


def pretrain(
    method: str,
    store: SliceStore | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    profile: str = "quick",
    epochs: int | None = None,
    batch_size: int | None = None,
    devices: int = 1,
    num_nodes: int = 1,
    accelerator: str = "auto",
    resume: bool = True,
    every_n_epochs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    max_steps: int | None = None,
    strategy: str | None = None,
    num_workers: int | None = None,
    callbacks: Sequence[Callback] = (),
    **overrides: Any,
) -> PretrainResult:
    """Pre-train ``method`` on all slices of ``store`` and write checkpoints/encoders/metrics to ``out_dir``.

    ``epochs``/``batch_size``/``every_n_epochs`` and any config field in ``overrides`` replace the
    profile's values (``batch_size`` is per device). ``max_steps`` stops early without changing
    the planned schedule (for tests and benchmarks). ``resume``: continue from
    ``out_dir/checkpoints/last.ckpt`` if present, else start fresh (with ``resume=False`` an
    existing run folder is an error). ``devices x num_nodes > 1`` runs DDP.

    GPU path: ``precision`` (e.g. ``precision="bf16-mixed"``), ``channels_last``, ``compile``,
    ``num_workers`` and ``pin_memory`` are config fields too (see :class:`PretrainConfig`); their
    ``"auto"``/``None`` defaults are resolved here for ``accelerator`` and the run's config (in
    ``result.config`` and the encoder cards) holds the resolved values.
    """
    cfg = get_config(method, profile, epochs=epochs, batch_size=batch_size, every_n_epochs=every_n_epochs,
                     num_workers=num_workers, **overrides)
    cfg = resolve_device_options(cfg, accelerator, int(devices))
    if not isinstance(store, SliceStore):
        store = SliceStore(store)
    out_dir = Path(out_dir)
    last = out_dir / "checkpoints" / "last.ckpt"
    if not resume and (last.exists() or (out_dir / "metrics.csv").exists()):
        raise PretrainError(f"{out_dir}: a pre-training run is already here; pass resume=True to continue it "
                            "or choose another out_dir")
    world = int(devices) * int(num_nodes)
    steps_per_epoch = len(store) // (cfg.batch_size * world)
    if steps_per_epoch < 1:
        raise PretrainError(f"{store.path}: {len(store)} slices are fewer than one batch of "
                            f"{cfg.batch_size} x {world} device(s); lower batch_size")
    total_steps = steps_per_epoch * cfg.epochs
    out_dir.mkdir(parents=True, exist_ok=True)

    pl.seed_everything(seed, workers=True, verbose=False)
    module = method_class(method)(cfg, mean=store.mean, std=store.std, seed=seed, total_steps=total_steps,
                                  steps_per_epoch=steps_per_epoch, store=str(store.meta.get("name", store.path.name)))
    module.check_data(len(store), str(store.path))
    counts = count_parameters(module)
    use_gpu = is_cuda(accelerator)
    module.use_device_options(cuda=use_gpu)
    data = StoreDataModule(store, cfg.batch_size, seed=seed, num_workers=cfg.num_workers, pin_memory=cfg.pin_memory)
    quiet_lightning()  # no GPU/TPU/tip/"fit stopped" chatter on the notebook pages (ssl_lib.console)
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=_strategy(world, strategy),
        precision=cfg.precision,
        max_epochs=cfg.epochs, max_steps=-1 if max_steps is None else int(max_steps),
        sync_batchnorm=bool(cfg.sync_batchnorm and world > 1 and use_gpu),
        use_distributed_sampler=False, logger=False, enable_model_summary=False,
        enable_progress_bar=progress, deterministic=not use_gpu, benchmark=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(out_dir),
        plugins=[AtomicCheckpointIO()],
        callbacks=[EpochCheckpoint(out_dir / "checkpoints", cfg.every_n_epochs, cfg.keep_checkpoints),
                   EncoderExport(out_dir, cfg.every_n_epochs, profile), MetricsLog(out_dir), *callbacks],
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if (resume and last.exists()) else None)
    wall = time.perf_counter() - start
    metrics = pd.read_csv(out_dir / "metrics.csv") if (out_dir / "metrics.csv").exists() else pd.DataFrame()
    steps = pd.read_csv(out_dir / "steps.csv") if (out_dir / "steps.csv").exists() else pd.DataFrame()
    return PretrainResult(
        method=method, profile=profile, run_dir=out_dir, config=cfg,
        encoders=sorted((out_dir / "encoders").glob("epoch_*.pt")), metrics=metrics, steps=steps,
        trainable_params=counts["trainable"], total_params=counts["total"],
        peak_memory_mb=_peak_memory_mb(module.device), wall_time_s=wall,
        epochs_done=int(trainer.current_epoch), global_step=int(trainer.global_step), module=module,
    )


# ==============================================================================================
# Loading, parameter table, previews
# ==============================================================================================
def load_module(run_dir_or_ckpt: str | os.PathLike, map_location: str = "cpu") -> PretrainModule:
    """The trained module of a run (``<run>/checkpoints/last.ckpt``) or of one ``.ckpt`` file."""
    path = Path(run_dir_or_ckpt)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise PretrainError(f"{path}: no pre-training checkpoint here; run pretrain() first")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    method = ckpt["hyper_parameters"]["config"]["method"]
    return method_class(method).load_from_checkpoint(path, map_location=map_location)


def load_encoder(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """An exported encoder (``encoders/epoch_XXXX.pt``) as a backbone, with its card."""
    from ..models.backbone import load_encoder_weights

    path = Path(path)
    card_file = path.with_suffix(".json")
    if not path.is_file() or not card_file.is_file():
        raise PretrainError(f"{path}: encoder weights or their .json card are missing")
    card = json.loads(card_file.read_text())
    net = build_backbone(card["arch"])
    load_encoder_weights(net, torch.load(path, map_location="cpu", weights_only=True))
    return net, card


#: Trainable parameters reported in the paper's Table 1 (millions).
PAPER_TABLE1_PARAMS_M = {"byol": 70.1, "swav": 24.1, "mocov2": 47.6, "spark": 25.6}


def param_table(profile: str = "paper", methods: Sequence[str] = METHODS) -> pd.DataFrame:
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
    for method in methods:
        module = build_module(method, profile)
        c = count_parameters(module)
        width = module.encoder.layer4[-1].conv1.in_channels if hasattr(module.encoder, "layer4") else 0
        rows.append({"method": method, "arch": module.cfg.arch, **{k: v / 1e6 for k, v in c.items()},
                     "encoder_with_fc": (c["encoder"] + width * 1000 + 1000) / 1e6,
                     "paper": PAPER_TABLE1_PARAMS_M[method]})
        del module
    return pd.DataFrame(rows).set_index("method").round(2)


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
