"""Running a pre-training: the loop (:func:`pretrain`), the store as a data module, the callbacks.

:func:`pretrain` runs a registered method (:mod:`.registry`) on a store with Lightning and
writes, under ``out_dir``::

    checkpoints/last.ckpt                    every ``every_n_epochs`` and at the end (atomic;
                                             epoch_XXXX.ckpt too with ``keep_checkpoints="all"``)
    encoders/epoch_XXXX.pt + .json           the encoder (torchvision state dict, no fc) + card
    metrics.csv                              per epoch: epoch, step, loss, lr, images_per_s, seconds
    steps.csv                                per step: epoch, step, loss, lr
    size.json                                the run's cost (the paper's Table 1): parameters,
                                             peak memory, training time (:func:`write_size`)

``XXXX`` counts completed epochs. ``resume=True`` continues from ``checkpoints/last.ckpt``
(optimizer, schedule, MoCo queue, momentum encoders, epoch and step restored). The encoder files
are written and read by :mod:`.encoder_file` only.

Multi-GPU / multi-node: ``devices`` x ``num_nodes`` > 1 selects Lightning DDP (``ddp``, or
``ddp_notebook`` inside Jupyter), and it trains the paper's recipe: Wolf et al. 2023 trained on
one GPU, so one DDP step equals one step of one device with the whole batch (loss, gradients,
batch-norm statistics, MoCo's queue; tests/test_pretrain_ddp.py checks it on 2 CPU ranks):

- ``batch_size`` is the **global** batch (the paper's), split evenly over the ranks (refused if it
  does not divide), with the learning rate unchanged; an epoch is ``slices // batch_size`` steps;
- each rank reads its own shard of the store (a ``DistributedSampler`` seeded by ``seed``, also
  used for one process so that the epoch order is a function of ``(seed, epoch)``);
- every batch norm takes its statistics over the global batch (``sync_batchnorm``, on by default:
  :class:`BatchNormSync` converts them to :class:`ssl_lib.models.syncbn.SyncBatchNorm`, which
  runs on the CPU too and makes no host sync), SparK's masked batch norms over the visible
  positions of all ranks (as official SparK's synced sparse norms);
- MoCo v2 gathers the keys of all ranks and enqueues them on every rank, so the queue is the same
  everywhere and is not re-broadcast (DDP's ``broadcast_buffers`` is off: every buffer is equal on
  all ranks by construction, and the 32 MB queue would otherwise go over the wire every step);
  with synced batch norms it needs no shuffle-BN (MoCo's multi-GPU substitute, still used with
  ``sync_batchnorm=False``); SwAV's Sinkhorn sums over all ranks.

GPU path (every profile, resolved per accelerator by :func:`resolve_device_options`): on CUDA
bf16-mixed precision (Lightning AMP), channels-last weights and views, persistent loader
workers with pinned memory, and no host-device sync per step (the loss stays on the device
until the epoch ends; the progress bar shows it only on the CPU), cuDNN autotuning
(``benchmark=True``: the shapes are fixed); ``compile=True`` adds ``torch.compile`` of every
network the training step runs (:meth:`~.base.PretrainModule.compile_targets`). On the CPU:
float32, contiguous, no workers, deterministic algorithms. Both flags are process-wide in PyTorch;
:func:`pretrain` restores them when the run ends (:mod:`ssl_lib.torch_flags`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins import LayerSync, TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..console import quiet_lightning
from ..data.store import SliceStore
from ..models.syncbn import convert_sync_batchnorm, revert_sync_batchnorm
from ..precision import is_cuda, resolve_channels_last, resolve_precision
from ..torch_flags import run_flags, torch_flags
from .base import PretrainConfig, PretrainError, PretrainModule
from .encoder_file import encoder_file, list_encoder_epochs, save_encoder, torch_save_atomic
from .registry import get_config, method_class

__all__ = ["AtomicCheckpointIO", "BatchNormSync", "EncoderExport", "EpochCheckpoint", "MetricsLog", "PretrainResult",
           "StoreDataModule", "count_parameters", "load_module", "per_device_batch", "pretrain", "resolve_device_options"]


# ==============================================================================================
# Data: the store as a LightningDataModule
# ==============================================================================================
def _whole_batch(batch):
    return batch


class BatchNormSync(LayerSync):
    """Lightning's ``sync_batchnorm`` with :class:`ssl_lib.models.syncbn.SyncBatchNorm`: the global
    batch's statistics under DDP on any device (torch's runs on GPUs only and syncs the host)."""

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        return revert_sync_batchnorm(model)


class StoreDataModule(pl.LightningDataModule):
    """All slices of a store, shuffled per epoch by ``(seed, epoch)``, sharded across DDP ranks.

    Batches are uint8 ``(B, 1, H, W)`` (plus labels, unused) fetched whole from the memory map.
    On a GPU, ``num_workers`` persistent worker processes read ahead into pinned memory
    (``pin_memory``), so the copy to the device overlaps the previous step.
    """

    def __init__(self, store: SliceStore, batch_size: int, seed: int = 0, num_workers: int = 0,
                 pin_memory: bool = False):  # batch_size: per rank
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
class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside the target and renamed into place.

    Lightning's own ``_atomic_save`` goes through an fsspec transaction whose temporary file
    lives in the system temp folder; when that is another file system the final move is a copy,
    which a kill can leave half-written. This writes in the target folder and uses ``os.replace``
    (:func:`~ssl_lib.pretrain.encoder_file.torch_save_atomic`).
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        torch_save_atomic(checkpoint, Path(path))


def _is_save_epoch(trainer: pl.Trainer, every_n: int) -> bool:
    done = trainer.current_epoch + 1
    final = done >= (trainer.max_epochs or done) or (trainer.max_steps not in (-1, None)
                                                     and trainer.global_step >= trainer.max_steps)
    return done % max(1, every_n) == 0 or final


class EpochCheckpoint(Callback):
    """``last.ckpt`` (what ``resume`` continues from) every ``every_n_epochs`` and at the final
    epoch; with ``keep="all"`` also ``checkpoints/epoch_XXXX.ckpt`` (XXXX = completed epochs) at
    each of them, all kept (``"last"``: none of them, see ``PretrainConfig.keep_checkpoints``).

    Through Lightning's public API only (``Trainer.save_checkpoint``, which writes on rank 0 through
    the trainer's checkpoint IO, :class:`AtomicCheckpointIO` here); the trainer runs with
    ``enable_checkpointing=False`` so that Lightning adds no checkpoint callback of its own.
    """

    def __init__(self, dirpath: Path, every_n_epochs: int, keep: str = "last"):
        self.dirpath, self.period, self.keep = Path(dirpath), every_n_epochs, keep
        self._saved_step = -1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self._saved_step == trainer.global_step \
                or not _is_save_epoch(trainer, self.period):
            return
        self._saved_step = trainer.global_step
        if self.keep == "all":
            trainer.save_checkpoint(self.dirpath / f"epoch_{trainer.current_epoch + 1:04d}.ckpt")
        trainer.save_checkpoint(self.dirpath / "last.ckpt")


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
            save_encoder(pl_module, self.out_dir, epoch, self.profile)



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


#: Lightning's DDP strategy names and their start methods.
_DDP_START = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}
#: DDP without a broadcast of rank 0's buffers before every forward (torch >= 2.14 names it
#: ``forward_sync_buffers``; ``broadcast_buffers`` before, deprecated since)
_NO_BUFFER_BROADCAST = ({"forward_sync_buffers": False}
                        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                        else {"broadcast_buffers": False})


def _interactive() -> bool:
    """An interactive interpreter or a Jupyter kernel (both set ``sys.ps1``), as Lightning decides it."""
    import sys

    return hasattr(sys, "ps1") or bool(sys.flags.interactive)


def _strategy(world: int, strategy):
    """The Lightning strategy: ``auto`` for one device, else DDP without buffer broadcasts (see the
    module docstring); a named DDP strategy becomes that, any other strategy is used as given."""
    if world <= 1:
        return strategy if strategy is not None else "auto"
    if strategy is None:  # in a notebook kernel DDP must fork; from a script it starts processes
        strategy = "ddp_notebook" if _interactive() else "ddp"
    if isinstance(strategy, str) and strategy in _DDP_START:
        return DDPStrategy(start_method=_DDP_START[strategy], **_NO_BUFFER_BROADCAST)
    return strategy


def per_device_batch(batch_size: int, world: int) -> int:
    """The per-rank share of the global ``batch_size`` over ``world`` ranks (it must divide evenly)."""
    if batch_size % world:
        raise PretrainError(f"batch_size {batch_size} is the global batch (as the paper's, on one GPU) and must "
                            f"split evenly over {world} devices; choose a multiple of {world}")
    return batch_size // world


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
    profile's values (``batch_size`` is the global batch of all devices together, split evenly over
    them; see the module docstring). ``max_steps`` stops early without changing
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
    local_batch = per_device_batch(cfg.batch_size, world)
    steps_per_epoch = len(store) // cfg.batch_size
    if steps_per_epoch < 1:
        raise PretrainError(f"{store.path}: {len(store)} slices are fewer than one batch of {cfg.batch_size}; "
                            "lower batch_size")
    total_steps = steps_per_epoch * cfg.epochs
    out_dir.mkdir(parents=True, exist_ok=True)

    pl.seed_everything(seed, workers=True, verbose=False)
    module = method_class(method)(cfg, mean=store.mean, std=store.std, seed=seed, total_steps=total_steps,
                                  steps_per_epoch=steps_per_epoch, store=str(store.meta.get("name", store.path.name)))
    module.check_data(len(store), str(store.path))
    counts = count_parameters(module)
    use_gpu = is_cuda(accelerator)
    module.use_device_options(cuda=use_gpu)
    data = StoreDataModule(store, local_batch, seed=seed, num_workers=cfg.num_workers, pin_memory=cfg.pin_memory)
    quiet_lightning()  # no GPU/TPU/tip/"fit stopped" chatter on the notebook pages (ssl_lib.console)
    flags = run_flags("cuda" if use_gpu else "cpu")  # CPU: deterministic; CUDA: cuDNN autotuning (fixed shapes)
    with torch_flags(**flags):  # the Trainer sets them process-wide; restored when the run ends
        trainer = pl.Trainer(
            accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=_strategy(world, strategy),
            precision=cfg.precision,
            max_epochs=cfg.epochs, max_steps=-1 if max_steps is None else int(max_steps),
            use_distributed_sampler=False, logger=False, enable_model_summary=False,
            enable_progress_bar=progress, enable_checkpointing=False, **flags,
            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(out_dir),
            plugins=[AtomicCheckpointIO(), *([BatchNormSync()] if cfg.sync_batchnorm and world > 1 else [])],
            # the checkpoint last, as Lightning orders its own checkpoint callbacks: it holds the others' state
            callbacks=[EncoderExport(out_dir, cfg.every_n_epochs, profile), MetricsLog(out_dir), *callbacks,
                       EpochCheckpoint(out_dir / "checkpoints", cfg.every_n_epochs, cfg.keep_checkpoints)],
        )
        start = time.perf_counter()
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if (resume and last.exists()) else None)
        wall = time.perf_counter() - start
    metrics = pd.read_csv(out_dir / "metrics.csv") if (out_dir / "metrics.csv").exists() else pd.DataFrame()
    steps = pd.read_csv(out_dir / "steps.csv") if (out_dir / "steps.csv").exists() else pd.DataFrame()
    result = PretrainResult(
        method=method, profile=profile, run_dir=out_dir, config=cfg,
        encoders=[encoder_file(out_dir, e) for e in list_encoder_epochs(out_dir)], metrics=metrics, steps=steps,
        trainable_params=counts["trainable"], total_params=counts["total"],
        peak_memory_mb=_peak_memory_mb(module.device), wall_time_s=wall,
        epochs_done=int(trainer.current_epoch), global_step=int(trainer.global_step), module=module,
    )
    if trainer.is_global_zero:
        write_size(result, device=f"{world} x {'GPU' if use_gpu else 'CPU'}")
    return result


#: The file of a pre-training run's cost, under its run folder.
SIZE_FILE = "size.json"


def write_size(result: PretrainResult, device: str = "") -> Path:
    """``<run>/size.json``: what the paper's Table 1 gives for a pre-training, for this run.

    ``train_seconds`` is the sum of the per-epoch times of ``metrics.csv`` (every session of a
    resumed run); ``peak_memory_gb`` is the GPU's allocated peak on CUDA and the process's peak
    resident memory on a CPU (``memory``: which).
    """
    from ..atomic import atomic_write

    seconds = float(result.metrics["seconds"].sum()) if "seconds" in result.metrics else result.wall_time_s
    cuda = "GPU" in device
    info = {"method": result.method, "profile": result.profile, "trainable_params": int(result.trainable_params),
            "total_params": int(result.total_params), "peak_memory_gb": round(result.peak_memory_mb / 1024, 3),
            "memory": "GPU allocated" if cuda else "process RSS", "train_seconds": round(seconds, 1),
            "epochs": int(result.epochs_done), "steps": int(result.global_step), "device": device}
    return atomic_write(result.run_dir / SIZE_FILE, json.dumps(info, indent=1))


# ==============================================================================================
# Loading a trained module
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

