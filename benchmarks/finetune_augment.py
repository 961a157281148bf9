"""The fine-tuning input path with the authors' MONAI augmentation: per slice (before) against batched (now).

Part 1, the input path alone (``--size`` 224 px, ``--batch`` 64: the paper profile's), in images/s,
side by side in one run with their ratio:

- **per-slice MONAI** (the loop fine-tuning ran before): index the uint8 slices on the host, copy
  the batch to the device, normalise, then MONAI ``RandFlip`` + ``RandRotate(+-15 deg)`` one slice at
  a time (:class:`ssl_lib.finetune_augment.MonaiAugment`; each rotated slice copies its affine from
  the host to the device);
- **batched (ours)**: what :func:`ssl_lib.finetune.fit` runs now: the slices already on the device,
  indexed with device indices, normalised, flipped and rotated as MONAI does in one batched op with
  per-sample draws (:func:`ssl_lib.finetune_feed.prepare_images` with
  :class:`ssl_lib.finetune_augment.FlipRotate`);
- **no augmentation (floor)**: the same without augmentation: what any path pays (on the CPU
  mostly writing the network's fresh 3-channel float input, ~38 MB per batch of 64 at 224 px).

Part 2, per batch of the profile on the device: the batched flip, MONAI per slice and the batched
flip + rotation next to one full fine-tuning step (forward, backward, Adam) of the profile's network
on the same batch: the augmentation's share of a step.

Part 3, a whole fine-tuning run (:func:`ssl_lib.finetune.fit`) of the profile on ``--slices``
generated slices with ``augment="flip"`` (the linear phase on features computed once) and with
``augment="monai"`` (the linear phase runs the frozen backbone on every augmented batch).

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
from ssl_lib.finetune_augment import FlipRotate, MonaiAugment  # noqa: E402
from ssl_lib.finetune_feed import prepare_images, shuffled_batches, to_device  # noqa: E402
from ssl_lib.models.classifier import Classifier  # noqa: E402
from ssl_lib.profiles import PROFILE_NAMES  # noqa: E402

OLD = "per-slice MONAI (before)"
NEW = "batched (ours)"
FLOOR = "no augmentation (floor)"


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


def input_paths(device: str, size: int = 224, batch: int = 64, repeats: int = 5, n: int | None = None,
                channels_last: bool | None = None) -> dict:
    """``{name: callable}``: one training batch through the old and the new input path (each call the next batch),
    and through the new one without augmentation (the floor both share: normalising, the 3-channel input).

    ``n`` slices of ``size`` px (default: 4 batches); ``channels_last``: the memory format of the
    network input (default: on CUDA only, as the paper profile).
    """
    dev = torch.device(device)
    cl = dev.type == "cuda" if channels_last is None else bool(channels_last)
    n = n or 4 * batch
    g = torch.Generator().manual_seed(0)
    host = torch.randint(0, 255, (n, 1, size, size), dtype=torch.uint8, generator=g)
    on_device = to_device(host, dev)
    monai = MonaiAugment(seed=0)
    gen = torch.Generator(device=dev).manual_seed(0)
    batched = FlipRotate()
    old_order = torch.Generator().manual_seed(0)

    def old():  # fit's loop before: host index, (pinned) copy, normalise 3 channels, MONAI slice by slice
        idx = torch.randperm(n, generator=old_order)[:batch]
        images = host[idx]
        x = ft._prep(images.pin_memory() if dev.type == "cuda" else images, 0.5, 0.25, dev, cl)
        return monai(x)

    def new():  # fit's loop now: device index, normalise, batched flip + rotation, 3 channels
        idx = shuffled_batches(n, batch, gen)[0]
        return prepare_images(on_device[idx], mean=0.5, std=0.25, device=dev, channels_last=cl, augment=batched,
                              generator=gen)

    def floor():  # what every path pays: device index, normalise, the network's 3-channel input
        idx = shuffled_batches(n, batch, gen)[0]
        return prepare_images(on_device[idx], mean=0.5, std=0.25, device=dev, channels_last=cl)

    return {OLD: old, NEW: new, FLOOR: floor}


def input_path_speed(device: str, size: int = 224, batch: int = 64, repeats: int = 5) -> pd.DataFrame:
    """images/s of the old and the new input path (median of ``repeats`` batches, after one warm-up each)."""
    dev = torch.device(device)
    paths = input_paths(device, size, batch, repeats)
    rows = []
    for name, fn in paths.items():
        fn()  # warm-up
        rows.append({"input path": name, "seconds_per_batch": _median_time(fn, dev, repeats)})
    table = pd.DataFrame(rows).set_index("input path")
    table["img_s"] = batch / table["seconds_per_batch"]
    table["vs_before"] = table["img_s"] / table.loc[OLD, "img_s"]
    return table


def per_batch(profile: str, device: str, repeats: int = 5, batch: int | None = None) -> pd.DataFrame:
    prof = ft.get_profile(profile)
    dev = torch.device(device)
    b = batch or prof.batch_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (b, 1, prof.image_size, prof.image_size), dtype=torch.uint8, generator=g)
    x = ft._prep(images.to(dev), 0.5, 0.25, dev, False)
    gen = torch.Generator(device=dev).manual_seed(0)
    flip, flip_rotate, monai_full = FlipRotate(rotate=False), FlipRotate(), MonaiAugment(seed=0)
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
    rows = [("flip, batched", _median_time(lambda: flip(x, gen), dev, repeats)),
            ("MONAI RandFlip + RandRotate, per slice", _median_time(lambda: monai_full(x), dev, repeats)),
            ("flip + rotation, batched (ours)", _median_time(lambda: flip_rotate(x, gen), dev, repeats)),
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
    ap.add_argument("--size", type=int, default=224, help="slice side of the input-path comparison (paper: 224)")
    ap.add_argument("--input-batch", type=int, default=64, help="batch of the input-path comparison (paper: 64)")
    ap.add_argument("--batch", type=int, default=None, help="batch size of the per-batch table (default: the profile's)")
    ap.add_argument("--slices", type=int, default=256, help="training slices of the whole-run comparison")
    ap.add_argument("--no-fit", action="store_true", help="skip the whole-run comparison")
    args = ap.parse_args(argv)
    print(f"fine-tuning input path, device={args.device}, threads={torch.get_num_threads()}")
    out = {"input_path": input_path_speed(args.device, args.size, args.input_batch, args.repeats)}
    print(f"input path alone, {args.size} px, batch {args.input_batch}: MONAI flip + rotation per slice vs batched")
    print(out["input_path"].round(4).to_string())
    out["per_batch"] = per_batch(args.profile, args.device, args.repeats, args.batch)
    print(f"\nper batch, profile={args.profile}")
    print(out["per_batch"].round(4).to_string())
    if not args.no_fit:
        out["fit"] = whole_fit(args.profile, args.device, args.slices)
        print(f"\nwhole fine-tuning run, {args.slices} training slices")
        print(out["fit"].round(2).to_string())
    return out


if __name__ == "__main__":
    main()
