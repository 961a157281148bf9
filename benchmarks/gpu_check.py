"""The GPU check: the paper profile's speed on one GPU against the paper's Table 1, in one script.

Run on a machine with a GPU (about 5-8 minutes on one modern GPU; ``--steps`` scales it):

    python benchmarks/gpu_check.py                       # device cuda, paper profile
    python benchmarks/gpu_check.py --spark-official /tmp/spark-official   # + the official SparK step

It prints three tables, each from code of ``benchmarks/`` that is imported, not copied:

1. **pre-training, paper profile** (ResNet50, the paper's batches and crops; on CUDA bfloat16
   autocast and channels-last, loader workers): images/s of :func:`ssl_lib.pretrain.pretrain`
   itself per method on a generated 512 px store (:func:`study_speed.paper_profile_speed`), the
   projected time of 900 epochs over LIDC-IDRI's 244,527 slices on this GPU, the paper's Table 1
   time (one RTX 3090) and the speed-up (Table 1 / ours);
2. **each step against its reference loop** (:func:`reference_loops.run`, paper profile): ours
   next to lightly's example loop for BYOL, MoCo v2, SwAV, and the official SparK step when
   ``--spark-official`` points at a local copy;
3. **a short fine-tuning run** of the paper's fine-tuning profile (ResNet50, 224 px, bf16,
   channels-last) on a generated two-class task: a real :func:`ssl_lib.finetune.finetune_run`
   with ``--ft-epochs`` full epochs, its seconds and images/s of the full phase, and the
   projected time of the paper's grid (``PAPER_GRID_RUNS`` runs of 60 full epochs over the
   mean training-set size ``--ft-train-mean``) on this GPU.

A summary line per method ends the output. On the CPU the same script runs at smoke size (the
test does), which checks the code path, not the speed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import reference_loops  # noqa: E402
import study_speed  # noqa: E402

from ssl_lib import finetune as ft  # noqa: E402
from ssl_lib.data.store import SliceRecord, write_store  # noqa: E402
from ssl_lib.paths import StudyPaths  # noqa: E402
from ssl_lib.pretrain import METHODS  # noqa: E402

#: Fine-tuning runs of the paper's grid: 5 inits x (COVID 4 fractions + OrganSMNIST 6 + brain 2) x 5 seeds.
PAPER_GRID_RUNS = 5 * (4 + 6 + 2) * 5


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
    """One real fine-tuning run (1 linear + ``epochs`` full epochs) and the paper grid projected from it."""
    base = ft.get_profile(profile)
    prof = ft.get_profile(base, linear_epochs=1, full_epochs=epochs)
    with tempfile.TemporaryDirectory() as tmp:
        task_store(Path(tmp), n_patients, base.image_size)
        data = ft.load_task_data(tmp, "covid", prof.image_size)
        ft.finetune_run(tmp, "covid", "random", profile=ft.get_profile(prof, full_epochs=1), data=data,
                        device=device, save=False)  # warm-up (kernels, allocator)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        row = ft.finetune_run(tmp, "covid", "random", profile=prof, data=data, device=device, save=False)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        curves = row["_fit"].curves
    full = curves[curves["phase"] == "full"]
    ips = row["train_size"] * len(full) / float(full["time_s"].sum())
    grid_h = PAPER_GRID_RUNS * base.full_epochs * train_mean / ips / 3600
    channels_last, precision = ft.device_options(prof, device)
    return pd.DataFrame([{"profile": profile, "arch": prof.arch, "image_size": prof.image_size,
                          "precision": precision, "channels_last": channels_last, "train_size": row["train_size"],
                          "full_epochs": len(full), "run_s": seconds, "full_phase_img_s": ips,
                          "paper_grid_runs": PAPER_GRID_RUNS, "projected_grid_h_one_gpu": grid_h}])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--profile", default="paper", choices=["smoke", "quick", "paper"],
                    help="pre-training and fine-tuning profile (smoke: for the CPU test)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--steps", type=int, default=20, help="timed pre-training steps per method")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--ref-steps", type=int, default=10, help="timed steps per reference loop")
    ap.add_argument("--spark-official", default=None, metavar="PATH",
                    help="local copy of the official SparK pretrain/ folder")
    ap.add_argument("--ft-epochs", type=int, default=2, help="full epochs of the short fine-tuning run")
    ap.add_argument("--ft-patients", type=int, default=200, help="patients (2 slices each) of the generated task")
    ap.add_argument("--ft-train-mean", type=float, default=1500.0,
                    help="mean training-set size of a paper grid run (for the projection)")
    args = ap.parse_args(argv)
    out: dict = {}
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(f"GPU check on {name}, profile {args.profile}, torch {torch.__version__}")

    print(f"\n== 1. pre-training ({args.profile} profile): pretrain() images/s, {study_speed.PAPER_EPOCHS} epochs x "
          f"{study_speed.LIDC_SLICES:,} slices vs the paper's Table 1 (one RTX 3090) ==")
    out["pretrain"] = study_speed.paper_profile_speed(args.methods, args.device, args.steps, args.warmup, args.profile)
    cols = ["precision", "channels_last", "batch", "img_s", "projected_900_epochs", "paper_table1", "speedup"]
    print(out["pretrain"][cols].round(2).to_string())

    print(f"\n== 2. each step against its reference loop ({args.profile} profile, {args.device}) ==")
    ref_methods = [m for m in reference_loops.REFERENCE_METHODS if m in args.methods]
    out["reference"] = reference_loops.run(args.profile, args.ref_steps, max(1, args.warmup // 2), args.device,
                                           ref_methods, spark_official=args.spark_official)
    print(out["reference"].round(3).to_string())

    print(f"\n== 3. a short fine-tuning run ({args.profile} profile, {args.device}) ==")
    out["finetune"] = short_finetune(args.profile, args.device, args.ft_epochs, args.ft_patients, args.ft_train_mean)
    print(out["finetune"].round(2).T.to_string(header=False))

    print("\n== summary ==")
    ref = out["reference"]
    for method, r in out["pretrain"].iterrows():
        line = (f"{method:7s} {r['img_s']:8.1f} img/s -> 900 epochs in {r['projected_900_epochs']:>9s} "
                f"(paper: {r['paper_table1']}, {r['speedup']:.2f}x)")
        if (method, "ours") in ref.index:
            line += f"; vs lightly loop {ref.loc[(method, 'ours'), 'ours_vs_ref']:.2f}x"
        print(line)
    f = out["finetune"].iloc[0]
    print(f"fine-tuning {f['full_phase_img_s']:8.1f} img/s -> the paper's {PAPER_GRID_RUNS} runs in "
          f"{f['projected_grid_h_one_gpu']:.1f} h on one such GPU")
    return out


if __name__ == "__main__":
    main()
