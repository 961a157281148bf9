"""Cost of the authors' MONAI fine-tuning augmentation, side by side with our batched flip.

Part 1, per batch on the device: our batched horizontal flip, MONAI ``RandFlip`` alone and
MONAI ``RandFlip`` + ``RandRotate(+-15 deg)`` (:class:`ssl_lib.finetune_augment.MonaiAugment`,
one slice at a time), next to one full fine-tuning step (forward, backward, Adam) of the
profile's network on the same batch: the augmentation's share of a step.

Part 2, a whole fine-tuning run (:func:`ssl_lib.finetune.fit`) of the profile on ``--slices``
generated slices with ``augment="flip"`` (the linear phase on features computed once) and with
``augment="monai"`` (the linear phase runs the frozen backbone on every augmented batch): what
rotation costs a quick-profile run.

    python benchmarks/finetune_augment.py --profile quick --device cpu
    python benchmarks/finetune_augment.py --profile paper --device cuda --no-fit
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ssl_lib.finetune as ft  # noqa: E402
from ssl_lib.finetune_augment import MonaiAugment  # noqa: E402
from ssl_lib.models.classifier import Classifier  # noqa: E402
from ssl_lib.profiles import PROFILE_NAMES  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def per_batch(profile: str, device: str, repeats: int = 5, batch: int | None = None) -> pd.DataFrame:
    prof = ft.get_profile(profile)
    dev = torch.device(device)
    b = batch or prof.batch_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (b, 1, prof.image_size, prof.image_size), dtype=torch.uint8, generator=g)
    x = ft._prep(images.to(dev), 0.5, 0.25, dev, False)
    flip_gen = torch.Generator().manual_seed(0)
    monai_flip, monai_full = MonaiAugment(seed=0, rotate=False), MonaiAugment(seed=0)
    model = Classifier(prof.arch, 2).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    labels = torch.arange(b) % 2
    cl, precision = ft.device_options(prof, dev)
    if cl:
        model.to(memory_format=torch.channels_last)

    def step():
        ft.train_step(model, opt, images, labels, mean=0.5, std=0.25, device=dev, channels_last=cl, flip=False,
                      precision=precision)

    step()  # warm-up
    rows = [("batched flip (ours)", _median_time(lambda: ft._flip(x, flip_gen), dev, repeats)),
            ("MONAI RandFlip", _median_time(lambda: monai_flip(x), dev, repeats)),
            ("MONAI RandFlip + RandRotate", _median_time(lambda: monai_full(x), dev, repeats)),
            ("fine-tuning step (no augmentation)", _median_time(step, dev, max(2, repeats // 2)))]
    table = pd.DataFrame(rows, columns=["what", "seconds"]).set_index("what")
    table["share_of_step"] = table["seconds"] / table.loc["fine-tuning step (no augmentation)", "seconds"]
    return table


def whole_fit(profile: str, device: str, slices: int) -> pd.DataFrame:
    prof = ft.get_profile(profile)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (slices, 1, prof.image_size, prof.image_size), dtype=torch.uint8, generator=g)
    y = torch.arange(slices) % 2
    val = max(8, slices // 4)
    rows = []
    for augment in ("flip", "monai"):
        torch.manual_seed(0)
        model = Classifier(prof.arch, 2)
        t = time.perf_counter()
        ft.fit(model, x, y, x[:val], y[:val], ft.get_profile(prof, augment=augment), mean=0.5, std=0.25,
               device=device)
        rows.append({"augment": augment, "seconds": time.perf_counter() - t})
    table = pd.DataFrame(rows).set_index("augment")
    table["vs_flip"] = table["seconds"] / table.loc["flip", "seconds"]
    return table


def main(argv=None) -> dict[str, pd.DataFrame]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=list(PROFILE_NAMES))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the profile's)")
    ap.add_argument("--slices", type=int, default=256, help="training slices of the whole-run comparison")
    ap.add_argument("--no-fit", action="store_true", help="skip the whole-run comparison")
    args = ap.parse_args(argv)
    out = {"per_batch": per_batch(args.profile, args.device, args.repeats, args.batch)}
    print(f"fine-tuning augmentation, profile={args.profile}, device={args.device}, threads={torch.get_num_threads()}")
    print(out["per_batch"].round(4).to_string())
    if not args.no_fit:
        out["fit"] = whole_fit(args.profile, args.device, args.slices)
        print(f"whole fine-tuning run, {args.slices} training slices")
        print(out["fit"].round(2).to_string())
    return out


if __name__ == "__main__":
    main()
