"""Fine-tuning throughput: our full training step against a plain step on a pre-made tensor.

Times, in images/s, with the model and batch size of a fine-tuning profile:

* ``ours (in-memory store)``: what :func:`ssl_lib.finetune.fit` does every full-model step:
  index the task's uint8 slices held in memory, random flip, normalise to 3 channels
  (channels-last where the profile says so), forward, backward, Adam;
* ``ours (store loader)``: the same step fed by :func:`ssl_lib.data.store.make_loader` straight
  from the memory-mapped store (what a Lightning DataModule would do);
* ``plain step``: forward, backward, Adam on one pre-made float tensor ``(B, 3, H, W)`` already
  on the device, default memory format and float32 (the floor any pipeline pays; on CUDA with
  the run's bfloat16 autocast and channels-last, so the ratio is the pipeline's overhead);
* ``linear-only step``: the frozen-backbone phase on cached features (see ``fit``);

and the ratio of each to the plain step.

Usage: ``python benchmarks/finetune_speed.py [--profile quick] [--steps 20] [--device cpu] [--n 512]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ssl_lib.data.store import SliceRecord, make_loader, write_store  # noqa: E402
from ssl_lib.finetune import device_options, get_profile, train_step  # noqa: E402
from ssl_lib.precision import autocast  # noqa: E402
from ssl_lib.models.classifier import Classifier  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(step, n_steps: int, batch: int, device: torch.device, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    _sync(device)
    return n_steps * batch / (time.perf_counter() - start)


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=512, help="slices in the benchmark store")
    ap.add_argument("--batch", type=int, default=None, help="override the profile's batch size")
    args = ap.parse_args(argv)
    prof = get_profile(args.profile)
    device = torch.device(args.device)
    size, batch = prof.image_size, args.batch or prof.batch_size
    cl, precision = device_options(prof, device)
    plain_cl = cl and device.type == "cuda"
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = write_store((SliceRecord(rng.integers(0, 255, (size, size)).astype(np.uint8), f"p{i}", i % 2, "train")
                             for i in range(args.n)), Path(tmp) / "s", size=size, name="bench", task="binary",
                            class_names=["a", "b"])
        images = torch.from_numpy(np.array(store.images)).unsqueeze(1)
        labels = torch.from_numpy(store.labels.astype(np.int64))
        gen = torch.Generator().manual_seed(0)

        def fresh():
            torch.manual_seed(0)
            m = Classifier(prof.arch, 2).to(device)
            if cl:
                m = m.to(memory_format=torch.channels_last)
            m.train()
            return m, torch.optim.Adam(m.parameters(), lr=prof.lr, weight_decay=prof.weight_decay)

        rates = {}
        model, opt = fresh()

        def ours():
            idx = torch.randint(0, args.n, (batch,), generator=gen)
            train_step(model, opt, images[idx], labels[idx], mean=store.mean, std=store.std, device=device,
                       channels_last=cl, flip=True, generator=gen, precision=precision)

        rates["ours (in-memory store)"] = _rate(ours, args.steps, batch, device)

        loader = make_loader(store.dataset(), batch, shuffle=True, drop_last=True)
        it = iter(loader)

        def ours_loader():
            nonlocal it
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(loader)
                x, y = next(it)
            train_step(model, opt, x, y, mean=store.mean, std=store.std, device=device, channels_last=cl, flip=True,
                       generator=gen, precision=precision)

        rates["ours (store loader)"] = _rate(ours_loader, args.steps, batch, device)

        torch.manual_seed(0)
        plain_model = Classifier(prof.arch, 2).to(device).train()
        if plain_cl:
            plain_model = plain_model.to(memory_format=torch.channels_last)
        plain_opt = torch.optim.Adam(plain_model.parameters(), lr=prof.lr, weight_decay=prof.weight_decay)
        x_pre = torch.randn(batch, 3, size, size, device=device)
        if plain_cl:
            x_pre = x_pre.contiguous(memory_format=torch.channels_last)
        y_pre = (torch.arange(batch) % 2).to(device)

        def plain():
            with autocast(device, precision if device.type == "cuda" else "32-true"):
                loss = F.cross_entropy(plain_model(x_pre), y_pre)
            plain_opt.zero_grad(set_to_none=True)
            loss.backward()
            plain_opt.step()

        rates["plain step"] = _rate(plain, args.steps, batch, device)

        feats = torch.randn(args.n, plain_model.head.in_features, device=device)

        def linear():
            idx = torch.randint(0, args.n, (batch,), generator=gen).to(device)
            loss = F.cross_entropy(plain_model.head(feats[idx]), labels[idx.cpu()].to(device))
            plain_opt.zero_grad(set_to_none=True)
            loss.backward()
            plain_opt.step()

        rates["linear-only step (cached features)"] = _rate(linear, args.steps, batch, device)
    base = rates["plain step"]
    print(f"fine-tuning throughput, profile {prof.name}: {prof.arch} {size}px batch {batch} on {device} "
          f"({torch.get_num_threads()} threads, channels_last={cl}, {precision}, {args.steps} steps)")
    print(f"{'pipeline':38s} {'images/s':>10s} {'vs plain':>9s}")
    for name, r in rates.items():
        print(f"{name:38s} {r:10.1f} {r / base:8.2f}x")
    return rates


if __name__ == "__main__":
    main()
