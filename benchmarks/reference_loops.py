"""Our pre-training step of each method against the reference loop a user would otherwise run.

For BYOL, MoCo v2 and SwAV the reference is a plain PyTorch loop built from lightly's own
modules the way lightly's documented examples (``examples/pytorch/{byol,moco,swav}.py``) build
it: a torchvision ResNet without its classifier, lightly's heads (``BYOLProjectionHead``,
``BYOLPredictionHead``, ``MoCoProjectionHead``, ``SwaVProjectionHead``, ``SwaVPrototypes``),
``update_momentum`` / ``deactivate_requires_grad``, lightly's losses (``NegativeCosineSimilarity``,
``NTXentLoss`` with a memory bank for MoCo, ``SwaVLoss``), and a ``DataLoader`` whose dataset
applies lightly's per-sample PIL transforms (``BYOLTransform``, ``MoCoV2Transform``,
``SwaVTransform``) to each slice, one crop size at a time through the network (SwAV), in the
example's order of calls. The transforms are set to our views (the profile's crop sizes and
scales, flip and blur probabilities, blur sigma; no colour jitter, grey scale or solarisation:
CT slices are grey), the heads to the profile's sizes, and the optimiser is the profile's (LARS
for BYOL and SwAV, SGD for MoCo v2), so both loops do the same work per image.

"Ours" is the full step of :mod:`ssl_lib.pretrain` as Lightning runs it
(:func:`pretrain_speed.our_step`: store loader, normalise and augment the whole batch on the
device, networks, backward, optimiser and schedule). Both run on the same backbone, views, batch
size and device, with the run's precision and memory format (CUDA: bfloat16 autocast and
channels-last, loader workers; CPU: float32, no workers unless ``--workers``); their steps
alternate so that changes of the machine's load hit both alike. The table gives the median
seconds per step, images/s and ours / reference.

SparK: with ``--spark-official PATH`` (a local copy of the official SparK ``pretrain/`` folder,
never part of this repository) the official step is timed against ours by
``benchmarks/spark_vs_official.py`` (issue 12); without it, SparK's row is skipped and the
table says so.

    python benchmarks/reference_loops.py --profile quick --device cpu --steps 20
    python benchmarks/reference_loops.py --profile paper --device cpu --batch 8 --steps 3   # the paper's views
    python benchmarks/reference_loops.py --profile paper --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import pretrain_speed  # noqa: E402

from ssl_lib.data.store import SliceStore  # noqa: E402
from ssl_lib.models.backbone import num_features  # noqa: E402
from ssl_lib.precision import autocast  # noqa: E402
from ssl_lib.pretrain import PretrainConfig, get_config, resolve_device_options  # noqa: E402

REFERENCE_METHODS = ("byol", "mocov2", "swav")


# --------------------------------------------------------------------------- data, the examples' way
class PILSlices(torch.utils.data.Dataset):
    """The store's slices as grey PIL images through a per-sample transform (as lightly's examples load images)."""

    def __init__(self, store: SliceStore, transform: Callable):
        self.images, self.transform = store.images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(np.asarray(self.images[i]), mode="L")), 0


def lightly_transform(method: str, cfg: PretrainConfig, mean: float, std: float):
    """Lightly's transform of ``method`` set to our views (crop, flip, blur as the profile; grey: no colour)."""
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, SwaVTransform
    from lightly.transforms.moco_transform import MoCoV2Transform

    norm = {"mean": [mean], "std": [std]}
    grey = dict(cj_prob=0.0, random_gray_scale=0.0, hf_prob=cfg.flip_p, sigmas=tuple(cfg.blur_sigma), normalize=norm)
    if method == "byol":
        return BYOLTransform(
            BYOLView1Transform(cfg.crop_size, min_scale=cfg.crop_scale[0], gaussian_blur=cfg.blur_p[0],
                               solarization_prob=0.0, **grey),
            BYOLView2Transform(cfg.crop_size, min_scale=cfg.crop_scale[0], gaussian_blur=cfg.blur_p[1],
                               solarization_prob=0.0, **grey))
    if method == "mocov2":
        return MoCoV2Transform(cfg.crop_size, min_scale=cfg.crop_scale[0], gaussian_blur=cfg.blur_p[0], **grey)
    if method == "swav":
        return SwaVTransform(crop_sizes=(cfg.crop_size, cfg.small_size), crop_counts=(2, cfg.n_small),
                             crop_min_scales=(cfg.crop_scale[0], cfg.small_scale[0]),
                             crop_max_scales=(cfg.crop_scale[1], cfg.small_scale[1]),
                             gaussian_blur=cfg.blur_p[0] if cfg.blur_p else 0.0, **grey)
    raise ValueError(f"no lightly reference loop for {method!r}; choose one of {REFERENCE_METHODS}")


# --------------------------------------------------------------------------- models, the examples' way
def resnet_trunk(arch: str) -> nn.Module:
    """A torchvision ResNet without its classifier, as the examples build it: ``Sequential(children[:-1])``."""
    import torchvision

    return nn.Sequential(*list(getattr(torchvision.models, arch)().children())[:-1])


class MomentumRef(nn.Module):
    """Backbone + projection head and their momentum copies (no gradients), as lightly's BYOL and MoCo examples."""

    def __init__(self, arch: str, projection_head: nn.Module):
        super().__init__()
        from lightly.models.utils import deactivate_requires_grad

        self.backbone, self.projection_head = resnet_trunk(arch), projection_head
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


class BYOLRef(MomentumRef):
    def __init__(self, cfg):
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

        super().__init__(cfg.arch, BYOLProjectionHead(num_features(cfg.arch), cfg.proj_hidden, cfg.proj_dim))
        self.prediction_head = BYOLPredictionHead(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)

    def forward(self, x):
        return self.prediction_head(super().forward(x))


class MoCoRef(MomentumRef):
    def __init__(self, cfg):
        from lightly.models.modules import MoCoProjectionHead

        super().__init__(cfg.arch, MoCoProjectionHead(num_features(cfg.arch), cfg.proj_hidden, cfg.proj_dim))


class SwaVRef(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

        self.backbone = resnet_trunk(cfg.arch)
        self.projection_head = SwaVProjectionHead(num_features(cfg.arch), cfg.proj_hidden, cfg.proj_dim)
        self.prototypes = SwaVPrototypes(cfg.proj_dim, n_prototypes=cfg.n_prototypes,
                                         n_steps_frozen_prototypes=cfg.frozen_prototype_steps)

    def forward(self, x, step):
        x = nn.functional.normalize(self.projection_head(self.backbone(x).flatten(start_dim=1)), dim=1, p=2)
        return self.prototypes(x, step)


def reference_step(method: str, cfg: PretrainConfig, store: SliceStore, device: torch.device, workers: int,
                   total_steps: int = 1000) -> Callable[[], torch.Tensor]:
    """``step()``: one step of lightly's example loop for ``method`` on the next batch (see the module docstring)."""
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss, SwaVLoss
    from lightly.models.utils import update_momentum
    from lightly.utils.lars import LARS
    from lightly.utils.scheduler import cosine_schedule

    loader = torch.utils.data.DataLoader(
        PILSlices(store, lightly_transform(method, cfg, store.mean, store.std)), batch_size=cfg.batch_size,
        shuffle=True, drop_last=True, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0)
    model = {"byol": BYOLRef, "mocov2": MoCoRef, "swav": SwaVRef}[method](cfg).to(device).train()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    if method == "mocov2":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        criterion = NTXentLoss(temperature=cfg.temperature, memory_bank_size=(cfg.queue_size, cfg.proj_dim))
    else:
        opt = LARS(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        criterion = NegativeCosineSimilarity() if method == "byol" else SwaVLoss(
            temperature=cfg.temperature, sinkhorn_iterations=cfg.sinkhorn_iterations,
            sinkhorn_epsilon=cfg.sinkhorn_epsilon)

    def batches():
        while True:
            yield from loader

    it = batches()
    counter = iter(range(10**9))

    def rgb(x):  # grey -> 3 channels on the device, as our step does
        x = x.to(device, non_blocking=True).expand(-1, 3, -1, -1)
        return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x

    def step() -> torch.Tensor:
        views, _ = next(it)
        i = next(counter)
        with autocast(device, cfg.precision):
            if method == "byol":
                m = cosine_schedule(i, total_steps, cfg.momentum_start, cfg.momentum_end)
                update_momentum(model.backbone, model.backbone_momentum, m=m)
                update_momentum(model.projection_head, model.projection_head_momentum, m=m)
                x0, x1 = rgb(views[0]), rgb(views[1])
                p0, z0 = model(x0), model.forward_momentum(x0)
                p1, z1 = model(x1), model.forward_momentum(x1)
                loss = 0.5 * (criterion(p0.float(), z1.float()) + criterion(p1.float(), z0.float()))
            elif method == "mocov2":
                update_momentum(model.backbone, model.backbone_momentum, m=cfg.encoder_momentum)
                update_momentum(model.projection_head, model.projection_head_momentum, m=cfg.encoder_momentum)
                query = model(rgb(views[0]))
                key = model.forward_momentum(rgb(views[1]))
                loss = criterion(query.float(), key.float())
            else:
                model.prototypes.normalize()
                crops = [model(rgb(x), i).float() for x in views]
                loss = criterion(crops[:2], crops[2:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    return step


# --------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(steps: dict[str, Callable], n: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of ``n`` steps of each callable (after ``warmup``), taking turns so that load hits all alike."""
    times = {k: [] for k in steps}
    for i in range(warmup + n):
        for name, fn in steps.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def compare_method(method: str, profile: str, store: SliceStore, steps: int, warmup: int, device: torch.device,
                   workers: int | None = None, batch: int | None = None) -> list[dict]:
    """Rows (ours, lightly reference) of one method: median s/step, img/s, ours / reference.

    ``batch``: instead of the profile's batch size (e.g. the paper's views on a CPU).
    """
    extra = {"batch_size": batch} if batch else {}
    if method == "mocov2":
        extra["queue_size"] = min(get_config(method, profile).queue_size, len(store) // 2 - 1)
    ours, _, cfg = pretrain_speed.our_step(method, profile, store, device, total_steps=steps + warmup, **extra)
    cfg = resolve_device_options(cfg, device.type)
    n_workers = cfg.num_workers if workers is None else int(workers)
    ref = reference_step(method, cfg, store, device, n_workers, total_steps=steps + warmup)
    times = alternate({"ours": ours, "lightly loop": ref}, steps, warmup, device)
    s_ours, s_ref = float(np.median(times["ours"])), float(np.median(times["lightly loop"]))
    common = {"method": method, "arch": cfg.arch, "batch": cfg.batch_size, "precision": cfg.precision,
              "channels_last": bool(cfg.channels_last)}
    return [common | {"impl": "ours", "s_per_step": s_ours, "img_s": cfg.batch_size / s_ours,
                      "ours_vs_ref": s_ref / s_ours, "loader_workers": cfg.num_workers},
            common | {"impl": "lightly example loop", "s_per_step": s_ref, "img_s": cfg.batch_size / s_ref,
                      "ours_vs_ref": 1.0, "loader_workers": n_workers}]


def spark_rows(official: str | None, profile: str, steps: int, warmup: int, device: str) -> list[dict]:
    """SparK against the official code's step (``benchmarks/spark_vs_official.py``), or a row saying it was skipped."""
    cfg = resolve_device_options(get_config("spark", profile), device)
    common = {"method": "spark", "arch": cfg.arch, "batch": cfg.batch_size, "precision": cfg.precision,
              "channels_last": bool(cfg.channels_last)}
    if official is None:
        return [common | {"impl": "official SparK: skipped (no --spark-official PATH)"}]
    try:
        import spark_vs_official
    except ImportError:
        raise SystemExit("--spark-official needs benchmarks/spark_vs_official.py (the official SparK step), "
                         "which this checkout lacks") from None
    table = spark_vs_official.run(official, arch=cfg.arch, size=cfg.crop_size, batch=cfg.batch_size, steps=steps,
                                  warmup=warmup, device=device)
    rows = []
    ref_ips = float(table.loc["official", "img_s"]) if "official" in table.index else float("nan")
    for impl, r in table.iterrows():
        rows.append(common | {"impl": "official SparK" if impl == "official" else str(impl),
                              "s_per_step": float(r["s_per_step"]) if "s_per_step" in r else cfg.batch_size / r["img_s"],
                              "img_s": float(r["img_s"]), "ours_vs_ref": float(r["img_s"]) / ref_ips})
    return rows


def run(profile: str = "quick", steps: int = 10, warmup: int = 2, device: str = "cpu",
        methods=REFERENCE_METHODS, workers: int | None = None, spark_official: str | None = None,
        store: str | None = None, batch: int | None = None) -> pd.DataFrame:
    dev = torch.device(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            cfg = get_config(method, profile, batch_size=batch)
            st = SliceStore(store) if store else pretrain_speed.synthetic_store(Path(tmp) / method,
                                                                                 cfg.batch_size * 4, cfg.store_size)
            rows += compare_method(method, profile, st, steps, warmup, dev, workers, batch)
    rows += spark_rows(spark_official, profile, steps, warmup, device)
    return pd.DataFrame(rows).set_index(["method", "impl"])


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each loop (after --warmup steps)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--methods", nargs="+", default=list(REFERENCE_METHODS), choices=list(REFERENCE_METHODS))
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers of the reference loops (default: ours, i.e. 0 on the CPU)")
    ap.add_argument("--spark-official", default=None, metavar="PATH",
                    help="local copy of the official SparK pretrain/ folder (times its step against ours)")
    ap.add_argument("--store", default=None, help="a slice store to read (default: a generated one)")
    ap.add_argument("--batch", type=int, default=None, help="batch size instead of the profile's (BYOL, MoCo, SwAV)")
    args = ap.parse_args(argv)
    table = run(args.profile, args.steps, args.warmup, args.device, args.methods, args.workers, args.spark_official,
                args.store, args.batch)
    print(f"SSL step vs reference loop, profile={args.profile}, device={args.device}, "
          f"threads={torch.get_num_threads()}, {args.steps} steps (median)")
    print(table.round(3).to_string())
    return table


if __name__ == "__main__":
    main()
