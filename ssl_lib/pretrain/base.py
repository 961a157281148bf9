"""The base of every pre-training method: its config, its Lightning module, a momentum-copy helper.

Wolf et al. 2023 pre-train a ResNet50 for 900 epochs on 244,527 LIDC-IDRI slices with BYOL,
SwAV, MoCo v2 (Lightning Bolts) and SparK (official code), with the hyperparameters of their
Supplementary Tables 4-7. Here every method is one :class:`PretrainModule` subclass in one file
of this package (``byol.py``, ``swav.py``, ``mocov2.py``, ``spark.py``; see :mod:`.registry`),
all of the same shape:

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

Methods with momentum (EMA) copies of their online networks (BYOL's target, MoCo v2's key
encoder) derive from :class:`MomentumModule`, which makes the copies and updates them.

A method module imports only this module (and the library outside :mod:`ssl_lib.pretrain`), so
the registry can import the methods without an import circle.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import lightning.pytorch as pl
from lightly.models.utils import deactivate_requires_grad, get_weight_decay_parameters, update_momentum
from torch import nn

from ..data.store import normalize_batch
from ..errors import SslCtError
from ..precision import resolve_channels_last

__all__ = ["MethodSpec", "MomentumModule", "PretrainConfig", "PretrainError", "PretrainModule", "scaled_sigma",
           "to_rgb", "warmup_cosine"]


class PretrainError(SslCtError, ValueError):
    """Bad pre-training input (unknown method/profile, store too small, ...)."""


#: What ``PretrainConfig.keep_checkpoints`` may be.
KEEP_CHECKPOINTS = ("last", "all")


@dataclass(frozen=True)
class PretrainConfig:
    """Settings shared by all methods (sizes in pixels).

    ``batch_size``: the global batch, as the paper's on one GPU; under DDP it is split evenly over
    the devices, learning rate unchanged (:mod:`.run`). ``sync_batchnorm``: under DDP every batch
    norm takes the statistics of the global batch (on by default: the paper's one-GPU statistics;
    ``False`` keeps per-device statistics and MoCo's shuffle-BN).

    ``store_size``: the store image side the profile is meant for (paper: 512, the LIDC slices;
    it only sizes the benchmark's generated store). ``crop_size``/``crop_scale``: the random
    resized crops. ``blur_p``: blur probability per view; ``blur_sigma`` in pixels of the crop.
    ``warmup_epochs``: linear warm-up, then cosine decay to zero over the run.

    The GPU path (defaults suit every profile; ``None``/``"auto"`` are resolved by :func:`pretrain`
    for the accelerator, see :mod:`ssl_lib.precision`): ``precision`` (Lightning's name; ``"auto"``:
    ``"bf16-mixed"`` on CUDA, ``"32-true"`` on the CPU), ``channels_last`` (backbone weights and
    input views in channels-last memory format; ``None``: on CUDA only), ``compile``
    (``torch.compile`` of every network the training step runs, in place: online and momentum
    networks, heads, SparK's sparse encoder, decoder and loss; off by default), ``num_workers`` (loader worker
    processes; ``None``: up to 8 per device on CUDA, 0 on the CPU) and ``pin_memory`` (``None``:
    on CUDA only).

    ``keep_checkpoints``: ``"last"`` keeps only ``checkpoints/last.ckpt`` (what resume continues
    from; with optimizer state, ~3x the encoder): later steps read the exported encoders of every
    checkpoint epoch, never the per-epoch checkpoints. ``"all"`` also keeps
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
    sync_batchnorm: bool = True
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    num_workers: int | None = None
    pin_memory: bool | None = None
    keep_checkpoints: str = "last"

    def __post_init__(self):
        if self.keep_checkpoints not in KEEP_CHECKPOINTS:
            raise PretrainError(f"keep_checkpoints must be one of {KEEP_CHECKPOINTS}, got {self.keep_checkpoints!r}")

    def crop_sizes(self) -> dict[str, int]:
        """``{field: side in px}`` of every input size the backbone sees (checked by
        :meth:`ssl_lib.profiles.StudyProfile.problems`: none may reach the last stage as 1 x 1)."""
        return {"crop_size": int(self.crop_size)}

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})



def scaled_sigma(crop: int) -> tuple[float, float]:
    """The paper's blur sigma (0.1-2.0 px at 224 px crops), scaled to a crop side."""
    return (0.1 * crop / 224, 2.0 * crop / 224)


@dataclass(frozen=True)
class MethodSpec:
    """Everything the study knows about one pre-training method; each method file defines one as ``SPEC``.

    ``name``: the folder/init name (``"byol"``); ``label``: the ONE display label (tables,
    figures, notebooks); ``config_class``/``module_class``: its :class:`PretrainConfig` subclass
    and :class:`PretrainModule` subclass; ``profiles``: ``{"smoke"|"quick"|"paper": config}``;
    ``summary``: a markdown paragraph for the book and the method's pre-training notebook;
    ``paper``: the paper's numbers for it (Table 1: ``params_m`` trainable parameters in
    millions, ``gpu_memory_gb``, ``hours`` of pre-training on one RTX 3090; ``table``: the
    supplementary table of its settings; ``table1_note``: the sentences that explain its Table 1
    count); ``step_cost``: the study runner's relative cost of its pre-training step (minutes of
    the quick profile on 2 CPU cores); ``preview_note``: markdown (heading and sentence) for the
    preview of a *trained* module in its notebook, for methods whose module overrides
    :meth:`PretrainModule.preview` (SparK's reconstruction); empty for the others.
    """

    name: str
    label: str
    config_class: type
    module_class: type
    profiles: dict[str, Any]
    summary: str
    paper: dict = field(default_factory=dict)
    step_cost: float = 1.0
    preview_note: str = ""

    def __post_init__(self):
        missing = {"smoke", "quick", "paper"} - set(self.profiles)
        if missing:
            raise PretrainError(f"method {self.name!r}: profiles {sorted(missing)} are missing")
        for profile, cfg in self.profiles.items():
            if not isinstance(cfg, self.config_class) or cfg.method != self.name:
                raise PretrainError(f"method {self.name!r}: profile {profile!r} is not a {self.config_class.__name__} "
                                    f"with method={self.name!r}")


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
        makes :meth:`rgb` hand the networks channels-last views; ``compile`` compiles what the
        training step runs (:meth:`compile_step`).
        """
        self.channels_last = resolve_channels_last("cuda" if cuda else "cpu", self.cfg.channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.cfg.compile:
            self.compile_step()

    def compile_targets(self) -> list[nn.Module]:
        """The networks :meth:`step_loss` calls, each compiled by :meth:`compile_step`: the online modules.

        Those are what the step runs for every method whose step calls its modules (BYOL's and MoCo's
        backbone and heads, SwAV's backbone, head and prototypes, SparK's whole :class:`SparK` with
        its sparse encoder path, decoder and loss: its step never calls ``encoder.forward``);
        :class:`MomentumModule` adds the momentum copies.
        """
        return list(self.online_modules())

    def compile_step(self, **options) -> list[nn.Module]:
        """``torch.compile`` every module of :meth:`compile_targets` in place (``nn.Module.compile(**options)``,
        e.g. ``backend="aot_eager"``): state-dict keys and checkpoints stay as they are. Returns them."""
        targets = self.compile_targets()
        for m in targets:
            m.compile(**options)
        return targets

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
        self.log("loss", loss, on_step=True, on_epoch=True, prog_bar=self.loss_on_progress_bar(), sync_dist=True,
                 batch_size=images.shape[0])
        return loss

    def loss_on_progress_bar(self) -> bool:
        """Whether the step's loss goes to the progress bar: only on the CPU and when a bar is shown.

        Lightning turns progress-bar metrics into Python numbers every step (a host-device sync on a
        GPU), so on CUDA the loss stays on the device until the epoch ends (:class:`~.run.MetricsLog`).
        """
        return (self.device.type == "cpu" and self._trainer is not None
                and self._trainer.progress_bar_callback is not None)

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


class MomentumModule(PretrainModule):
    """A method with momentum (EMA) copies of some online modules: BYOL's target network, MoCo v2's key encoder.

    After building its online modules, a subclass calls :meth:`make_momentum_copies` with their
    attribute names; each gets a frozen deep copy ``<name>_momentum`` (no gradients, excluded
    from :meth:`~PretrainModule.trainable_parameters` as long as the subclass's
    :meth:`~PretrainModule.online_modules` lists only the online ones). Each training step calls
    :meth:`update_momentum_copies`, which moves every copy towards its online module:
    ``copy = m * copy + (1 - m) * online`` with ``m`` from :meth:`momentum_now` (a constant or a
    schedule over the run; lightly's ``update_momentum``).
    """

    momentum_names: tuple[str, ...] = ()

    def make_momentum_copies(self, *names: str) -> None:
        """Add a frozen copy ``<name>_momentum`` of each online module ``<name>`` (in this order)."""
        for name in names:
            setattr(self, f"{name}_momentum", copy.deepcopy(getattr(self, name)))
        for name in names:
            deactivate_requires_grad(getattr(self, f"{name}_momentum"))
        self.momentum_names = tuple(names)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, momentum copy)`` of every module made by :meth:`make_momentum_copies`."""
        return [(getattr(self, n), getattr(self, f"{n}_momentum")) for n in self.momentum_names]

    def momentum_now(self) -> float:
        """The EMA momentum ``m`` of the current step."""
        raise NotImplementedError

    def compile_targets(self) -> list[nn.Module]:
        """The online modules and their momentum copies (the key/target networks run every step too)."""
        return super().compile_targets() + [target for _, target in self.momentum_pairs()]

    def update_momentum_copies(self) -> float:
        """One EMA step of every copy towards its online module; returns the ``m`` used."""
        m = self.momentum_now()
        for online, target in self.momentum_pairs():
            update_momentum(online, target, m=m)
        return m
