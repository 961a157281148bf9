"""Wall-clock time of a reduction grid (:func:`ssl_lib.finetune.run_grid`), three ways, in one run.

The grid: one generated two-class task of ``--n`` slices (60 % train, 20 % val, 20 % test, by
patient), ``--inits`` initialisations (``random`` plus fake exported encoders: speed does not
depend on the weights), fractions 100/50/25 % and two seeds, with a fine-tuning profile
(default ``quick``: ResNet18, 64 px, 40 frozen + 2 full epochs). Each way runs it in a fresh
study folder:

* ``one process, features per run``: one process, the frozen encoder's features recomputed by
  every run (how the grid ran before features were shared);
* ``one process, shared features``: one process, features computed once per encoder and task
  and reused by the other fractions and seeds;
* ``N workers, shared features``: ``run_grid(workers="auto")``, the runs of each encoder on a
  worker process of their own, the cores split between workers.

It prints seconds and the speed-up over the first way.

Usage: ``python benchmarks/grid_speed.py [--profile quick] [--n 600] [--inits 3] [--workers auto]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ssl_lib.finetune as ft  # noqa: E402
from ssl_lib.data.store import SliceRecord, write_store  # noqa: E402
from ssl_lib.models import build_backbone, encoder_state_dict  # noqa: E402
from ssl_lib.paths import StudyPaths  # noqa: E402
from ssl_lib.pretrain.registry import method_names  # noqa: E402

METHODS = method_names()


def make_study(root: Path, n: int, size: int, arch: str, methods: tuple[str, ...]) -> None:
    """A study folder with one generated ``covid`` store of ``n`` slices and fake encoders of ``methods``."""
    rng = np.random.default_rng(0)
    splits = ("train", "train", "train", "val", "test")

    def records():
        for i in range(n):
            label = i % 2
            img = rng.integers(0, 120, (size, size)).astype(np.uint8)
            a = size // 4 + label * size // 4
            img[a:a + size // 8, a:a + size // 8] = 220
            yield SliceRecord(img, f"p{i // 2}", label, splits[(i // 2) % 5], str(i))

    write_store(records(), StudyPaths(root).store("covid"), size=size, name="covid", task="binary",
                class_names=["NonCOVID", "COVID"])
    for k, method in enumerate(methods):
        d = StudyPaths(root).pretrain(method) / "encoders"
        d.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(k)
        torch.save(encoder_state_dict(build_backbone(arch)), d / "epoch_0001.pt")
        (d / "epoch_0001.json").write_text(json.dumps({"method": method, "epoch": 1, "arch": arch}))


class PerRunCache(ft.FeatureCache):
    """The old behaviour: nothing kept between runs (every run computes its frozen features)."""

    def entry(self, key: tuple, n: int):
        self.clear()
        return super().entry(key, n)


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--n", type=int, default=600, help="slices of the generated task")
    ap.add_argument("--inits", type=int, default=3, help="random + this many minus one fake encoders (2..5)")
    ap.add_argument("--workers", default="auto", help="workers of the last way (an int or auto)")
    args = ap.parse_args(argv)
    prof = ft.get_profile(args.profile)
    methods = METHODS[: max(1, min(len(METHODS), args.inits - 1))]
    workers = args.workers if args.workers == "auto" else int(args.workers)
    n_workers = ft.resolve_workers(workers)
    grid = dict(tasks=["covid"], fractions=[1.0, 0.5, 0.25], seeds=[0, 1], profile=prof, progress=False, stop_f1=None)
    ways = [("one process, features per run", 1, PerRunCache), ("one process, shared features", 1, ft.FeatureCache),
            (f"{n_workers} workers, shared features", workers, ft.FeatureCache)]
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, w, cache) in enumerate(ways):
            root = Path(tmp) / f"way{k}"
            make_study(root, args.n, prof.image_size, prof.arch, methods)
            start = time.perf_counter()
            rows = ft.run_grid(root, workers=w, features=cache(), **grid)  # each way its own cache
            seconds[name] = time.perf_counter() - start
            assert len(rows) == 6 * (len(methods) + 1), len(rows)
    base = seconds[ways[0][0]]
    print(f"reduction grid, profile {prof.name}: {prof.arch} {prof.image_size}px, {args.n} slices, "
          f"{len(methods) + 1} inits x 3 fractions x 2 seeds = {6 * (len(methods) + 1)} runs, "
          f"{torch.get_num_threads()} threads")
    print(f"{'way':34s} {'seconds':>9s} {'speed-up':>9s}")
    for name, s in seconds.items():
        print(f"{name:34s} {s:9.1f} {base / s:8.2f}x")
    return seconds


if __name__ == "__main__":
    main()
