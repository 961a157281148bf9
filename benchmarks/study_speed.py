"""The study's speed in one run: pipeline overhead, store read rate, and (GPU) the paper profile vs Table 1.

Prints, reusing the other benchmarks (imported, not copied):

1. pre-training, per method: images/s of the full training step next to a plain
   forward+backward of the same backbone on the same views, and the overhead ratio
   (:func:`pretrain_speed.run`);
2. fine-tuning: images/s of the full-model step next to the plain step and their ratio
   (:func:`finetune_speed.main`);
3. the slice store's read rate next to the paper's PNG-per-sample pipeline (:func:`store_read.main`);
4. on a GPU (``--device cuda``, or ``--paper`` to force it): the images/s of
   :func:`ssl_lib.pretrain.pretrain` itself with the paper profile (ResNet50, the paper's
   batches and crops, bf16-mixed, channels-last, loader workers) on a generated 512 px store,
   the projected time of 900 epochs over the paper's 244,527 LIDC-IDRI slices on one GPU, the
   paper's Table 1 training times (one RTX 3090; the caption says "until the best-performing
   epoch was reached", so the ratio is a lower bound when that epoch was before 900) and the
   speed-up. MoCo v2's queue is shortened to fit the generated store (its cost is negligible).

    python benchmarks/study_speed.py --profile quick --device cpu
    python benchmarks/study_speed.py --device cuda            # adds the paper profile vs Table 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import finetune_speed  # noqa: E402
import pretrain_speed  # noqa: E402
import store_read  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from ssl_lib.pretrain import METHODS, get_config, get_method, pretrain  # noqa: E402

PAPER_EPOCHS = 900
LIDC_SLICES = 244_527


def _days_hours(hours: float) -> str:
    d, h = divmod(int(round(hours)), 24)
    return f"{d} d {h} h"


class StepTimer(Callback):
    """Wall time of each training step (synchronised on CUDA); images/s after ``warmup`` steps."""

    def __init__(self, warmup: int):
        self.warmup, self.stamps, self.images = max(1, int(warmup)), [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.stamps.append(time.perf_counter())
        self.images.append(int(batch[0].shape[0]))

    @property
    def images_per_s(self) -> float:
        w = self.warmup
        if len(self.stamps) <= w:
            raise RuntimeError(f"need more than {w} steps to time, got {len(self.stamps)}")
        return sum(self.images[w:]) / (self.stamps[-1] - self.stamps[w - 1])


def paper_profile_speed(methods=METHODS, device: str = "cuda", steps: int = 20, warmup: int = 5,
                        profile: str = "paper") -> pd.DataFrame:
    """images/s of :func:`pretrain` with ``profile`` on ``device``, projected to 900 epochs of LIDC-IDRI."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            cfg = get_config(method, profile)
            n = cfg.batch_size * 4  # 4 steps per epoch; the run crosses epochs like a real one
            store = pretrain_speed.synthetic_store(Path(tmp) / method, n, cfg.store_size)
            extra = {"queue_size": min(cfg.queue_size, n // 2 - 1)} if hasattr(cfg, "queue_size") else {}
            timer = StepTimer(warmup)
            res = pretrain(method, store, Path(tmp) / method / "run", profile=profile, accelerator=device,
                           max_steps=max(1, warmup) + steps, progress=False, callbacks=[timer], **extra)
            ips = timer.images_per_s
            hours = PAPER_EPOCHS * LIDC_SLICES / ips / 3600
            paper = get_method(method).paper.get("hours", float("nan"))  # Wolf et al. 2023, Table 1 (RTX 3090)
            rows.append({"method": method, "profile": profile, "precision": res.config.precision,
                         "channels_last": res.config.channels_last, "batch": cfg.batch_size, "img_s": ips,
                         "projected_900_epochs": _days_hours(hours), "paper_table1": _days_hours(paper),
                         "projected_h": hours, "paper_h": paper, "speedup": paper / hours})
            del res
    return pd.DataFrame(rows).set_index("method")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"],
                    help="profile of the overhead benchmarks (1, 2)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per benchmark")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--finetune-n", type=int, default=512, help="slices in the fine-tuning benchmark store")
    ap.add_argument("--store-n", type=int, default=500, help="slices in the read-rate benchmark")
    ap.add_argument("--store-source-size", type=int, default=512)
    ap.add_argument("--store-size", type=int, default=224)
    ap.add_argument("--store-batch", type=int, default=64)
    ap.add_argument("--paper", action="store_true", help="time the paper profile also on the CPU")
    ap.add_argument("--paper-profile", default="paper", choices=["smoke", "quick", "paper"],
                    help="profile of section 4 (smoke: for tests)")
    ap.add_argument("--paper-methods", nargs="+", default=None, choices=list(METHODS),
                    help="methods of section 4 (default: --methods)")
    ap.add_argument("--paper-steps", type=int, default=20)
    args = ap.parse_args(argv)
    out: dict = {}

    print(f"== 1. pre-training: full step vs plain forward+backward (profile {args.profile}, {args.device}) ==")
    out["pretrain"] = pretrain_speed.run(args.profile, args.steps, args.device, args.methods, warmup=args.warmup)
    print(out["pretrain"].round(2).to_string())

    print(f"\n== 2. fine-tuning: full-model step vs plain step (profile {args.profile}, {args.device}) ==")
    out["finetune"] = finetune_speed.main(["--profile", args.profile, "--steps", str(args.steps), "--device",
                                           args.device, "--n", str(args.finetune_n)])

    print("\n== 3. slice store read rate ==")
    out["store"] = store_read.main(["--n", str(args.store_n), "--source-size", str(args.store_source_size),
                                    "--size", str(args.store_size), "--batch", str(args.store_batch)])

    if args.device == "cuda" or args.paper:
        methods = args.paper_methods or args.methods
        print(f"\n== 4. profile {args.paper_profile} on {args.device}: pretrain() images/s, "
              f"{PAPER_EPOCHS} epochs x {LIDC_SLICES:,} slices vs the paper's Table 1 (RTX 3090) ==")
        out["paper"] = paper_profile_speed(methods, args.device, args.paper_steps, args.warmup, args.paper_profile)
        cols = ["precision", "channels_last", "batch", "img_s", "projected_900_epochs", "paper_table1", "speedup"]
        print(out["paper"][cols].round(2).to_string())
        if args.device == "cuda":
            print(f"\n-- fine-tuning, profile {args.paper_profile} --")
            out["finetune_paper"] = finetune_speed.main(["--profile", args.paper_profile, "--steps",
                                                         str(args.paper_steps), "--device", args.device,
                                                         "--n", str(args.finetune_n)])

    ft = out["finetune"]
    print("\n== summary ==")
    for method, row in out["pretrain"].iterrows():
        print(f"pre-training {method:7s} {row['pretrain_img_s']:9.1f} img/s, plain {row['plain_img_s']:9.1f} img/s, "
              f"overhead {row['overhead']:.2f}x")
    print(f"fine-tuning          {ft['ours (in-memory store)']:9.1f} img/s, plain {ft['plain step']:9.1f} img/s, "
          f"overhead {ft['plain step'] / ft['ours (in-memory store)']:.2f}x")
    print(f"slice store reads    {out['store']['slice store (memmap, whole batches)']:9.0f} slices/s")
    return out


if __name__ == "__main__":
    main()
