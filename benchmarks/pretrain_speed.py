"""Pre-training throughput per method vs a plain forward+backward of the same backbone.

For each method: images/s of the full training step (store loader -> device -> normalise ->
batched augmentations -> networks, heads, momentum update, queue -> backward -> optimiser and
schedule step), next to images/s of a plain ResNet forward+backward+SGD step on the same views
(same count and sizes per source image), and the overhead ratio (plain / method). Both use the
run's precision and memory format (on CUDA: bfloat16 autocast and channels-last, as
:func:`ssl_lib.pretrain.pretrain`; on the CPU: float32). Runs on a structured synthetic store at
the profile's store size unless ``--store`` is given.

``--compile`` adds the same step with ``compile=True`` (``torch.compile`` of every network the
step runs, :meth:`ssl_lib.pretrain.base.PretrainModule.compile_step`; ``--compile-backend``,
default inductor): its images/s after ``--warmup`` steps (which include compiling) and the ratio
compiled / eager.

    python benchmarks/pretrain_speed.py --profile quick --steps 10 --device cpu
    python benchmarks/pretrain_speed.py --profile smoke --methods mocov2 --compile --warmup 2 --steps 10
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssl_lib.data.store import SliceRecord, SliceStore, make_loader, write_store  # noqa: E402
from ssl_lib.models.backbone import build_backbone  # noqa: E402
from ssl_lib.pretrain import METHODS, build_module, get_config  # noqa: E402
from ssl_lib.pretrain.base import to_rgb  # noqa: E402
from ssl_lib.pretrain.run import resolve_device_options  # noqa: E402
from ssl_lib.precision import autocast  # noqa: E402


def synthetic_store(folder: Path, n: int, size: int) -> SliceStore:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size

    def records():
        for i in range(n):
            img = np.full((size, size), 20.0)
            img[((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.35) ** 2 < 1] = 110
            cx, cy, r = rng.uniform(0.3, 0.7, 3) * (1, 1, 0.3)
            img[((xx - cx) ** 2 + (yy - cy) ** 2) < r * r] = 220
            yield SliceRecord(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8), patient=f"p{i}")

    return write_store(records(), folder / "lidc", size=size, name="lidc", overwrite=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def our_step(method: str, profile: str, store: SliceStore, device: torch.device, total_steps: int = 1000,
             compile_options: dict | None = None, **overrides):
    """``(step, module, cfg)``: ``step()`` runs one full pre-training step of ``method`` on the next batch of ``store``.

    The step as Lightning runs it: store loader -> device -> normalise -> augment -> networks,
    heads, momentum update, queue -> backward -> ``on_after_backward`` -> optimiser and schedule.
    ``overrides``: config fields (e.g. ``queue_size``); ``compile_options``: compile the step's
    networks with these ``torch.compile`` options (e.g. ``{"backend": "inductor"}``).
    """
    cfg = resolve_device_options(get_config(method, profile, **overrides), device.type)
    module = build_module(method, profile, mean=store.mean, std=store.std, total_steps=total_steps, **overrides)
    module.use_device_options(cuda=device.type == "cuda")
    if compile_options is not None:
        module.compile_step(**compile_options)
    module.to(device).train()
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    loader = make_loader(store.dataset(), cfg.batch_size, shuffle=True, drop_last=True,
                         num_workers=cfg.num_workers, pin_memory=cfg.pin_memory)

    def batches():
        while True:
            yield from loader

    it = batches()
    counter = iter(range(10**9))

    def step() -> torch.Tensor:
        images = next(it)[0]
        with autocast(device, cfg.precision):
            loss = module.step_loss(module.normalize(images), module.step_generator(next(counter)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        module.on_after_backward()
        opt.step()
        sched.step()
        return loss.detach()

    step.batches = it
    return step, module, cfg


def _step_times(step, steps: int, warmup: int, device: torch.device) -> list[float]:
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def compiled_img_s(method: str, profile: str, store: SliceStore, steps: int, warmup: int, device: torch.device,
                   backend: str = "inductor") -> float:
    """images/s of the full pre-training step with the step's networks compiled (after ``warmup`` steps)."""
    step, module, cfg = our_step(method, profile, store, device, total_steps=steps + warmup,
                                 compile_options={"backend": backend})
    return cfg.batch_size / float(np.median(_step_times(step, steps, max(1, warmup), device)))


def time_method(method: str, profile: str, store: SliceStore, steps: int, warmup: int, device: torch.device) -> dict:
    """Seconds per full pre-training step (method) and per plain backbone step on the same views."""
    step, module, cfg = our_step(method, profile, store, device, total_steps=steps + warmup)
    times = _step_times(step, steps, warmup, device)

    # the same views through a plain backbone: forward + backward + SGD
    with torch.no_grad():
        shapes = [tuple(v.shape[-2:]) for v in module.views(module.normalize(next(step.batches)[0]))]
    del module, step
    net = build_backbone(cfg.arch).to(device).train()
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    sgd = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    groups = {s: shapes.count(s) for s in dict.fromkeys(shapes)}
    inputs = {s: torch.randn(cfg.batch_size * n, 1, *s, device=device) for s, n in groups.items()}
    base = []
    for step in range(warmup + steps):
        _sync(device)
        t = time.perf_counter()
        sgd.zero_grad(set_to_none=True)
        for x in inputs.values():
            x = to_rgb(x).contiguous(memory_format=torch.channels_last) if cfg.channels_last else to_rgb(x)
            with autocast(device, cfg.precision):
                out = net(x)
            out.float().square().mean().backward()
        sgd.step()
        _sync(device)
        if step >= warmup:
            base.append(time.perf_counter() - t)
    method_ips = cfg.batch_size / float(np.median(times))
    plain_ips = cfg.batch_size / float(np.median(base))
    return {"method": method, "arch": cfg.arch, "batch": cfg.batch_size,
            "views": " + ".join(f"{n}x{s[0]}" for s, n in groups.items()),
            "precision": cfg.precision, "pretrain_img_s": method_ips, "plain_img_s": plain_ips, "overhead": plain_ips / method_ips}


def run(profile: str = "quick", steps: int = 10, device: str = "cpu", methods=METHODS, store: str | None = None,
        warmup: int = 2, compile_backend: str | None = None) -> pd.DataFrame:
    """One row per method; with ``compile_backend`` also ``compiled_img_s`` and ``compiled_vs_eager``."""
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for method in methods:
            cfg = get_config(method, profile)
            st = SliceStore(store) if store else synthetic_store(Path(tmp) / method, cfg.batch_size * 4,
                                                                 cfg.store_size)
            row = time_method(method, profile, st, steps, warmup, dev)
            if compile_backend is not None:
                row["compiled_img_s"] = compiled_img_s(method, profile, st, steps, warmup, dev, compile_backend)
                row["compiled_vs_eager"] = row["compiled_img_s"] / row["pretrain_img_s"]
            rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per method (after --warmup steps)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--store", default=None, help="a slice store to read (default: a generated one)")
    ap.add_argument("--compile", action="store_true", help="also time the step with its networks compiled")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend of --compile")
    args = ap.parse_args(argv)
    table = run(args.profile, args.steps, args.device, args.methods, args.store, args.warmup,
                args.compile_backend if args.compile else None)
    print(f"pre-training speed, profile={args.profile}, device={args.device}, threads={torch.get_num_threads()}"
          + (f", compiled with {args.compile_backend}" if args.compile else ""))
    print(table.round(2).to_string())
    return table


if __name__ == "__main__":
    main()
