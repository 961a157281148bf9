"""The GPU check: what a GPU user needs to know about the paper profile on their GPU, in one script.

Run on a machine with a GPU (about 5-10 minutes on one modern GPU; ``--steps`` scales it):

    python benchmarks/gpu_check.py                       # device cuda, paper profile
    python benchmarks/gpu_check.py --spark-official /tmp/spark-official   # + the official SparK step

It prints four tables, each from code of ``benchmarks/`` or ``ssl_lib`` that is imported, not copied:

1. **pre-training, paper profile** (ResNet50, the paper's batches and crops; on CUDA bfloat16
   autocast, channels-last, cuDNN autotuning and loader workers), per method:

   - ``img_s``: images/s of :func:`ssl_lib.pretrain.pretrain` itself in the *steady state*: timed
     per step after ``--warmup`` steps, over windows that hold no epoch boundary (the first step of
     every epoch is left out; epochs of ``--epoch-steps`` steps);
   - ``loader_img_s``: the store loader alone (the same loader, workers and pinned memory, batches
     copied to the device), also without epoch boundaries: the most ``img_s`` could be;
   - ``peak_gb`` (``torch.cuda.max_memory_allocated``, reset before each method; ``n/a`` on the
     CPU) beside ``paper_gb``, the allocated GPU memory of the paper's Table 1 (BYOL 14.4 GB,
     SwAV 21.6 GB, MoCo v2 18.7 GB, SparK 14.4 GB on an RTX 3090);
   - ``syncs_per_step``: host-device syncs per training step, counted by ``ssl_lib.syncs.count_syncs``
     when the library has it (``n/a`` otherwise);
   - the projected time of 900 epochs over LIDC-IDRI's 244,527 slices on this GPU, the paper's
     Table 1 time (one RTX 3090) and the speed-up (Table 1 / ours);
2. **each step against its reference loop** (:func:`reference_loops.run`, paper profile): ours
   next to lightly's example loop for BYOL, MoCo v2, SwAV, and the official SparK step when
   ``--spark-official`` points at a local copy;
3. **the fine-tuning input path** (:func:`finetune_augment.input_path_speed`: the profile's slice
   size and batch): images/s of the per-slice MONAI augmentation fine-tuning ran before, of the
   batched one on the device it runs now, and of the path without augmentation;
4. **a short fine-tuning run** of the paper's fine-tuning profile (ResNet50, 224 px, bf16,
   channels-last) on a generated two-class task: a real :func:`ssl_lib.finetune.finetune_run`
   with ``--ft-epochs`` full epochs, its seconds, images/s of the full phase, peak memory beside
   Table 1's 14.4 GB, and the projected time of the paper's grid (``PAPER_GRID_RUNS`` runs of 60
   full epochs over the mean training-set size ``--ft-train-mean``) on this GPU.

A summary line per method ends the output. On the CPU the same script runs at smoke size (the
test does), which checks the code path, not the speed.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import finetune_augment  # noqa: E402
import pretrain_speed  # noqa: E402
import reference_loops  # noqa: E402
import study_speed  # noqa: E402

from ssl_lib import finetune as ft  # noqa: E402
from ssl_lib.data.store import SliceRecord, write_store  # noqa: E402
from ssl_lib.paths import StudyPaths  # noqa: E402
from ssl_lib.pretrain import METHODS, get_config, get_method, pretrain  # noqa: E402
from ssl_lib.pretrain.run import StoreDataModule, resolve_device_options  # noqa: E402

#: Fine-tuning runs of the paper's grid: 5 inits x (COVID 4 fractions + OrganSMNIST 6 + brain 2) x 5 seeds.
PAPER_GRID_RUNS = 5 * (4 + 6 + 2) * 5
#: Wolf et al. 2023, Table 1: allocated GPU memory of every fine-tuning (COVID-19, OrgMNIST, Brain), GB.
PAPER_FINETUNE_GB = 14.4
NA = "n/a"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- memory
def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window on CUDA (frees the cache so the next peak is one method's own)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device):
    """Peak allocated GPU memory since :func:`reset_peak_memory`, GB (10^9 bytes, as Table 1); ``"n/a"`` on the CPU."""
    if device.type != "cuda":
        return NA
    return torch.cuda.max_memory_allocated(device) / 1e9


# --------------------------------------------------------------------------- host syncs
def count_syncs_function():
    """``ssl_lib.syncs.count_syncs`` when the library has it, else ``None``."""
    try:
        from ssl_lib.syncs import count_syncs
    except ImportError:
        return None
    return count_syncs


def syncs_per_step(step, steps: int = 2):
    """Host-device syncs per call of ``step()`` (after one uncounted call), or ``"n/a"`` without a counter."""
    count_syncs = count_syncs_function()
    if count_syncs is None:
        return NA
    step()
    with count_syncs() as counts:
        for _ in range(steps):
            step()
    total = counts.total if hasattr(counts, "total") else int(counts)
    return total / steps


# --------------------------------------------------------------------------- steady-state timing
class SteadyTimer(Callback):
    """Per-step wall times of a Lightning run, without epoch boundaries (synchronised on CUDA).

    The time of step ``i`` runs from the end of step ``i - 1`` to the end of step ``i`` (loader
    and step); the first step of every epoch (its window holds the epoch's end and start) and the
    first ``warmup`` steps are left out.
    """

    def __init__(self, warmup: int):
        self.warmup, self.last, self.seconds, self.images, self.seen = max(1, int(warmup)), None, [], [], 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        if self.last is not None and batch_idx > 0 and self.seen >= self.warmup:
            self.seconds.append(now - self.last)
            self.images.append(int(batch[0].shape[0]))
        self.last, self.seen = now, self.seen + 1

    @property
    def images_per_s(self) -> float:
        if not self.seconds:
            raise RuntimeError("no step was timed: raise --steps or --epoch-steps")
        return sum(self.images) / sum(self.seconds)


def total_steps_for(steps: int, warmup: int, epoch_steps: int) -> int:
    """Training steps that leave at least ``steps`` timed ones after ``warmup`` and without epoch-first steps."""
    n = max(1, warmup)
    timed = 0
    while timed < steps:
        if n % epoch_steps != 0 and n >= max(1, warmup):
            timed += 1
        n += 1
    return n


def loader_img_s(store, cfg, device: torch.device, steps: int, warmup: int) -> float:
    """images/s of the store loader alone (the run's workers and pinned memory, batches copied to the device)."""
    data = StoreDataModule(store, cfg.batch_size, seed=0, num_workers=cfg.num_workers, pin_memory=cfg.pin_memory)
    loader = data.train_dataloader()
    seconds, images, seen, epoch = [], 0, 0, 0
    while len(seconds) < steps:
        loader.sampler.set_epoch(epoch)
        last = None
        for i, batch in enumerate(loader):
            batch[0].to(device, non_blocking=True)
            _sync(device)
            now = time.perf_counter()
            if last is not None and i > 0 and seen >= warmup and len(seconds) < steps:
                seconds.append(now - last)
                images += int(batch[0].shape[0])
            last, seen = now, seen + 1
        epoch += 1
    return images / sum(seconds)


def pretrain_check(methods=METHODS, device: str = "cuda", steps: int = 20, warmup: int = 5, profile: str = "paper",
                   epoch_steps: int = 10, sync_steps: int = 2) -> pd.DataFrame:
    """Per method: steady img/s of :func:`pretrain`, loader-only img/s, peak memory, syncs, 900 epochs vs Table 1."""
    dev = torch.device(device)
    epoch_steps = max(2, int(epoch_steps))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            cfg = get_config(method, profile)
            n = cfg.batch_size * epoch_steps
            store = pretrain_speed.synthetic_store(Path(tmp) / method, n, cfg.store_size)
            extra = {"queue_size": min(cfg.queue_size, n // 2 - 1)} if hasattr(cfg, "queue_size") else {}
            run_cfg = resolve_device_options(get_config(method, profile, **extra), device)
            loader = loader_img_s(store, run_cfg, dev, steps, warmup)
            timer = SteadyTimer(warmup)
            reset_peak_memory(dev)
            total = total_steps_for(steps, warmup, epoch_steps)
            res = pretrain(method, store, Path(tmp) / method / "run", profile=profile, accelerator=device,
                           epochs=max(cfg.epochs, math.ceil(total / epoch_steps)), max_steps=total, progress=False,
                           callbacks=[timer], **extra)
            peak = peak_memory_gb(dev)
            ips = timer.images_per_s
            config = res.config
            del res
            step, module, _ = pretrain_speed.our_step(method, profile, store, dev, **extra)
            syncs = syncs_per_step(step, sync_steps)
            del step, module
            hours = study_speed.PAPER_EPOCHS * study_speed.LIDC_SLICES / ips / 3600
            paper = get_method(method).paper
            rows.append({"method": method, "profile": profile, "precision": config.precision,
                         "channels_last": config.channels_last, "batch": cfg.batch_size, "img_s": ips,
                         "loader_img_s": loader, "peak_gb": peak, "paper_gb": paper.get("gpu_memory_gb", NA),
                         "syncs_per_step": syncs, "projected_900_epochs": study_speed._days_hours(hours),
                         "paper_table1": study_speed._days_hours(paper.get("hours", float("nan"))),
                         "projected_h": hours, "paper_h": paper.get("hours", float("nan")),
                         "speedup": paper.get("hours", float("nan")) / hours})
    return pd.DataFrame(rows).set_index("method")


# --------------------------------------------------------------------------- fine-tuning
def task_store(out: Path, n_patients: int, size: int) -> Path:
    """A generated binary task (``covid`` layout: given train/val/test split), the class a bright disc's place."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    splits = ["train"] * 4 + ["val", "test"]

    def records():
        for p in range(n_patients):
            label = p % 2
            for k in range(2):
                img = rng.normal(60, 10, (size, size))
                cx = 0.3 + 0.4 * label
                img[(xx - cx) ** 2 + (yy - 0.5) ** 2 < 0.01] = 220
                yield SliceRecord(np.clip(img, 0, 255).astype(np.uint8), f"pat{p}", label,
                                  splits[(p // 2) % 6], f"{p}_{k}")

    write_store(records(), StudyPaths(out).store("covid"), size=size, name="covid", task="binary",
                class_names=["NonCOVID", "COVID"], overwrite=True)
    return out


def short_finetune(profile: str, device: str, epochs: int, n_patients: int, train_mean: float) -> pd.DataFrame:
    """One real fine-tuning run (1 linear + ``epochs`` full epochs), its peak memory, the paper grid projected from it."""
    dev = torch.device(device)
    base = ft.get_profile(profile)
    prof = ft.get_profile(base, linear_epochs=1, full_epochs=epochs)
    with tempfile.TemporaryDirectory() as tmp:
        task_store(Path(tmp), n_patients, base.image_size)
        data = ft.load_task_data(tmp, "covid", prof.image_size)
        ft.finetune_run(tmp, "covid", "random", profile=ft.get_profile(prof, full_epochs=1), data=data,
                        device=device, save=False)  # warm-up (kernels, allocator, cuDNN autotuning)
        reset_peak_memory(dev)
        t = time.perf_counter()
        row = ft.finetune_run(tmp, "covid", "random", profile=prof, data=data, device=device, save=False)
        _sync(dev)
        seconds = time.perf_counter() - t
        peak = peak_memory_gb(dev)
        curves = row["_fit"].curves
    full = curves[curves["phase"] == "full"]
    ips = row["train_size"] * len(full) / float(full["time_s"].sum())
    grid_h = PAPER_GRID_RUNS * base.full_epochs * train_mean / ips / 3600
    channels_last, precision = ft.device_options(prof, device)
    return pd.DataFrame([{"profile": profile, "arch": prof.arch, "image_size": prof.image_size,
                          "precision": precision, "channels_last": channels_last, "augment": prof.augment,
                          "train_size": row["train_size"], "full_epochs": len(full), "run_s": seconds,
                          "full_phase_img_s": ips, "peak_gb": peak, "paper_gb": PAPER_FINETUNE_GB,
                          "paper_grid_runs": PAPER_GRID_RUNS, "projected_grid_h_one_gpu": grid_h}])


def _fmt(v, digits: int = 1) -> str:
    return v if isinstance(v, str) else f"{v:.{digits}f}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--profile", default="paper", choices=["smoke", "quick", "paper"],
                    help="pre-training and fine-tuning profile (smoke: for the CPU test)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--steps", type=int, default=20, help="timed steady-state pre-training steps per method")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--epoch-steps", type=int, default=10, help="steps per epoch of the timed pre-training runs")
    ap.add_argument("--sync-steps", type=int, default=2, help="steps whose host syncs are counted")
    ap.add_argument("--ref-steps", type=int, default=10, help="timed steps per reference loop")
    ap.add_argument("--spark-official", default=None, metavar="PATH",
                    help="local copy of the official SparK pretrain/ folder")
    ap.add_argument("--input-repeats", type=int, default=10, help="timed batches of the fine-tuning input path")
    ap.add_argument("--ft-epochs", type=int, default=2, help="full epochs of the short fine-tuning run")
    ap.add_argument("--ft-patients", type=int, default=200, help="patients (2 slices each) of the generated task")
    ap.add_argument("--ft-train-mean", type=float, default=1500.0,
                    help="mean training-set size of a paper grid run (for the projection)")
    args = ap.parse_args(argv)
    out: dict = {}
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(f"GPU check on {name}, profile {args.profile}, torch {torch.__version__}")
    if count_syncs_function() is None:
        print("(host syncs: n/a, this ssl_lib has no ssl_lib.syncs.count_syncs)")

    print(f"\n== 1. pre-training ({args.profile} profile): steady-state pretrain() images/s (no epoch boundary in a "
          f"timed window), loader-only images/s, peak memory vs Table 1, host syncs per step, "
          f"{study_speed.PAPER_EPOCHS} epochs x {study_speed.LIDC_SLICES:,} slices vs the paper's Table 1 "
          f"(one RTX 3090) ==")
    out["pretrain"] = pretrain_check(args.methods, args.device, args.steps, args.warmup, args.profile,
                                     args.epoch_steps, args.sync_steps)
    cols = ["precision", "channels_last", "batch", "img_s", "loader_img_s", "peak_gb", "paper_gb", "syncs_per_step",
            "projected_900_epochs", "paper_table1", "speedup"]
    print(out["pretrain"][cols].round(2).to_string())

    print(f"\n== 2. each step against its reference loop ({args.profile} profile, {args.device}) ==")
    ref_methods = [m for m in reference_loops.REFERENCE_METHODS if m in args.methods]
    out["reference"] = reference_loops.run(args.profile, args.ref_steps, max(1, args.warmup // 2), args.device,
                                           ref_methods, spark_official=args.spark_official)
    print(out["reference"].round(3).to_string())

    prof = ft.get_profile(args.profile)
    print(f"\n== 3. the fine-tuning input path ({prof.image_size} px, batch {prof.batch_size}, {args.device}): "
          f"images/s, MONAI flip + rotation per slice (before) vs batched on the device (now) ==")
    out["input_path"] = finetune_augment.input_path_speed(args.device, prof.image_size, prof.batch_size,
                                                          args.input_repeats)
    print(out["input_path"].round(4).to_string())

    print(f"\n== 4. a short fine-tuning run ({args.profile} profile, {args.device}) ==")
    out["finetune"] = short_finetune(args.profile, args.device, args.ft_epochs, args.ft_patients, args.ft_train_mean)
    print(out["finetune"].round(2).T.to_string(header=False))

    print("\n== summary ==")
    ref = out["reference"]
    for method, r in out["pretrain"].iterrows():
        line = (f"{method:7s} {r['img_s']:8.1f} img/s (loader alone {r['loader_img_s']:.0f}) -> 900 epochs in "
                f"{r['projected_900_epochs']:>9s} (paper: {r['paper_table1']}, {r['speedup']:.2f}x); "
                f"peak {_fmt(r['peak_gb'])} GB (paper: {_fmt(r['paper_gb'])} GB); "
                f"syncs/step {_fmt(r['syncs_per_step'])}")
        if (method, "ours") in ref.index:
            line += f"; vs lightly loop {ref.loc[(method, 'ours'), 'ours_vs_ref']:.2f}x"
        print(line)
    inp = out["input_path"]
    print(f"fine-tuning input path {inp.loc[finetune_augment.NEW, 'img_s']:8.1f} img/s "
          f"({inp.loc[finetune_augment.NEW, 'vs_before']:.1f}x the per-slice MONAI path)")
    f = out["finetune"].iloc[0]
    print(f"fine-tuning {f['full_phase_img_s']:8.1f} img/s, peak {_fmt(f['peak_gb'])} GB (paper: {f['paper_gb']} GB) "
          f"-> the paper's {PAPER_GRID_RUNS} runs in {f['projected_grid_h_one_gpu']:.1f} h on one such GPU")
    return out


if __name__ == "__main__":
    main()
