"""SparK training step: ours (official decoder) against the official SparK code, side by side.

Times one optimisation step (random mask, sparse encoder, densify, decoder, masked-patch loss,
backward, LAMB with gradient clipping at 5) of

- ``official``: the official SparK code (Tian et al. 2023, github.com/keyu-tian/SparK,
  ``pretrain/{encoder,decoder,spark}.py`` and ``models/resnet.py``) read from a local copy given
  by ``--official PATH`` (never part of this repository): timm's ResNet with drop path 0.05 made
  sparse by the official ``SparseEncoder``, ``LightDecoder(width)``, ``SparK``, timm's LAMB; its
  ``utils.misc`` (only ``is_pow2n`` is used) is replaced by a small shim here;
- ``ours``: :class:`ssl_lib.models.spark.SparK` with ``decoder="official"``, the same width, drop
  path and LAMB, optimised as :class:`ssl_lib.pretrain.spark.SparKModule` does (lr/wd schedule
  step included), with the paper profile's options for the device (:func:`resolve_device_options`:
  on the CPU float32 and channels-last, on CUDA bfloat16 autocast and channels-last);
- ``ours, float32 contiguous``: the same in the official code's precision and memory format;
- ``ours + crop/flip``: ``ours`` plus our on-device random resized crop (bicubic) and flip.

Both get the same input (a grey batch repeated to 3 channels), batch size, input size and decoder
width; steps alternate between the implementations so that load changes hit both alike, and the
table gives the median seconds per step, images/s and the ratio to the official images/s.

    python benchmarks/spark_vs_official.py --official /path/to/SparK/pretrain --device cpu
    python benchmarks/spark_vs_official.py --official /path/to/SparK/pretrain --device cuda --size 224 --batch 64
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import types
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssl_lib.precision import autocast  # noqa: E402
from ssl_lib.pretrain import build_module, get_config, resolve_device_options  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_official(path: str | Path) -> dict[str, types.ModuleType]:
    """Import the official ``encoder``, ``decoder``, ``spark`` and ``models.resnet`` from ``path``.

    ``utils.misc`` of the official code pulls in logging/tensorboard helpers; the decoder needs
    only ``is_pow2n`` from it, so a shim module provides that one function.
    """
    path = Path(path).resolve()
    missing = [f for f in ("encoder.py", "decoder.py", "spark.py", "models/resnet.py") if not (path / f).is_file()]
    if missing:
        raise SystemExit(f"{path}: not a copy of SparK's pretrain/ folder (missing {', '.join(missing)})")
    utils = types.ModuleType("utils")
    utils.__path__ = []  # a package
    misc = types.ModuleType("utils.misc")
    misc.is_pow2n = lambda x: x > 0 and (x & (x - 1)) == 0
    utils.misc = misc
    sys.modules.setdefault("utils", utils)
    sys.modules.setdefault("utils.misc", misc)
    if "models" not in sys.modules:  # the official models/__init__ imports ConvNeXt etc.: only resnet is needed
        models = types.ModuleType("models")
        models.__path__ = [str(path / "models")]
        sys.modules["models"] = models
    sys.path.insert(0, str(path))
    try:
        mods = {name: importlib.import_module(name) for name in ("models.resnet", "encoder", "decoder", "spark")}
    finally:
        sys.path.remove(str(path))
    return mods


def official_step(mods: dict, *, arch: str, size: int, width: int, drop_path: float, device: torch.device,
                  lr: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """One official training step on a normalised 3-channel batch (as official ``pre_train_one_ep``)."""
    import timm
    from timm.optim import Lamb

    cnn = timm.create_model(arch, drop_path_rate=drop_path, pretrained=False, num_classes=0, global_pool="")
    enc = mods["encoder"].SparseEncoder(cnn, input_size=size, sbn=False)
    dec = mods["decoder"].LightDecoder(enc.downsample_raito, width=width, sbn=False)
    model = mods["spark"].SparK(enc, dec, mask_ratio=0.6, densify_norm="bn", sbn=False).to(device).train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # official get_param_groups
        (no_decay if p.ndim == 1 or name.endswith(".bias") or "mask_token" in name else decay).append(p)
    opt = Lamb([{"params": decay, "weight_decay": 0.04}, {"params": no_decay, "weight_decay": 0.0}],
               lr=lr, betas=(0.9, 0.95), max_grad_norm=5.0)

    def step(x: torch.Tensor) -> torch.Tensor:
        loss = model(x, active_b1ff=None, vis=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def our_step(*, arch: str, size: int, width: int, drop_path: float, batch: int, device: torch.device,
             precision: str = "32-true", channels_last: bool = False, augment: bool = False,
             decoder: str = "official") -> Callable[[torch.Tensor], torch.Tensor]:
    """One step of our SparK as :class:`~ssl_lib.pretrain.spark.SparKModule` trains it."""
    module = build_module("spark", "paper", arch=arch, crop_size=size, batch_size=batch, decoder=decoder,
                          decoder_width=width, drop_path=drop_path, total_steps=1000, steps_per_epoch=10)
    module.to(device).train()
    if channels_last:
        module.to(memory_format=torch.channels_last)
        module.channels_last = True  # channels-last views from module.rgb (the crop/flip path)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    counter = iter(range(10**9))

    def step(x: torch.Tensor) -> torch.Tensor:
        g = module.step_generator(next(counter))
        grey = x[:, :1]
        with autocast(device, precision):
            if augment:
                loss = module.step_loss(grey, g)
            else:
                v = x.contiguous(memory_format=torch.channels_last) if channels_last else x
                mask = module.spark.random_mask(x.shape[0], device=x.device, generator=g)
                loss = module.spark(v, mask, g)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss.detach()

    return step


def official_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official SparK state dict renamed to ours (official lists scales smallest first, ours layer1 first)."""
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if k.startswith("sparse_encoder.sp_cnn."):
            out["encoder." + k[len("sparse_encoder.sp_cnn."):]] = v
        elif parts[0] in ("densify_norms", "densify_projs", "mask_tokens"):
            name = {"densify_norms": "densify_norms", "densify_projs": "projs", "mask_tokens": "mask_tokens"}[parts[0]]
            out[".".join([name, str(3 - int(parts[1]))] + parts[2:])] = v
        elif k.startswith("dense_decoder.dec."):
            rest = parts[3:]
            rest = ["up"] + rest[1:] if rest[0] == "up_sample" else rest
            out[".".join(["decoder", parts[2]] + rest)] = v
        elif k.startswith("dense_decoder.proj."):
            out["head." + parts[-1]] = v
    return out


def check_against_official(mods: dict, *, arch: str = "resnet50", size: int = 64, batch: int = 4, width: int = 768,
                           seed: int = 0) -> dict[str, float]:
    """Identical weights, input and mask, float64, train mode, no drop path: largest differences of the
    loss, the reconstruction at masked patches and the parameter gradients between ours and the official code."""
    import timm

    from ssl_lib.models.backbone import build_backbone
    from ssl_lib.models.spark import SparK

    torch.manual_seed(seed)
    cnn = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="")
    enc = mods["encoder"].SparseEncoder(cnn, input_size=size, sbn=False)
    dec = mods["decoder"].LightDecoder(enc.downsample_raito, width=width, sbn=False)
    theirs = mods["spark"].SparK(enc, dec, mask_ratio=0.6, densify_norm="bn", sbn=False).double().train()
    with torch.no_grad():  # non-trivial norms and tokens so that every formula matters
        for m in theirs.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.3)
        for t in theirs.mask_tokens:
            t.normal_()
    ours = SparK(build_backbone(arch), image_size=size, decoder="official", decoder_width=width).double().train()
    state = {k: v for k, v in theirs.state_dict().items() if k not in ("imn_m", "imn_s", "norm_black")}
    ours.load_state_dict(official_to_ours(state), strict=True)
    x = torch.randn(batch, 1, size, size, dtype=torch.float64).expand(-1, 3, -1, -1).contiguous()
    mask = ours.random_mask(batch, generator=torch.Generator().manual_seed(seed))
    out = ours(x, mask)
    loss_theirs = theirs(x, active_b1ff=mask, vis=False)
    out["loss"].backward()
    loss_theirs.backward()
    with torch.no_grad():
        _, _, rec_or_inp = theirs(x, active_b1ff=mask, vis=True)
    masked = ~mask.repeat_interleave(32, 2).repeat_interleave(32, 3).expand_as(x)
    grads_theirs = official_to_ours({k: p.grad for k, p in theirs.named_parameters()})
    grad_diff = max(float((p.grad - grads_theirs[k]).abs().max() / grads_theirs[k].abs().max().clamp(min=1e-30))
                    for k, p in ours.named_parameters())
    loss_ours, loss_official = out["loss"].item(), loss_theirs.item()
    return {"loss_ours": loss_ours, "loss_official": loss_official, "loss_abs_diff": abs(loss_ours - loss_official),
            "reconstruction_max_abs_diff": float((out["reconstruction"] - rec_or_inp)[masked].abs().max()),
            "gradient_max_rel_diff": grad_diff}


def run(official: str | None = None, *, arch: str = "resnet50", size: int = 224, batch: int = 8, width: int = 768,
        drop_path: float = 0.05, steps: int = 5, warmup: int = 1, device: str = "cpu", seed: int = 0) -> pd.DataFrame:
    dev = torch.device(device)
    torch.manual_seed(seed)
    x = torch.randn(batch, 1, size, size, device=dev).expand(-1, 3, -1, -1).contiguous()
    steps_by_name: dict[str, Callable] = {}
    if official:
        mods = load_official(official)
        steps_by_name["official"] = official_step(mods, arch=arch, size=size, width=width, drop_path=drop_path,
                                                  device=dev, lr=2.5e-5)
    common = dict(arch=arch, size=size, width=width, drop_path=drop_path, batch=batch, device=dev)
    cfg = resolve_device_options(get_config("spark", "paper"), dev.type)
    ours = dict(precision=cfg.precision, channels_last=bool(cfg.channels_last))
    steps_by_name["ours"] = our_step(**common, **ours)
    steps_by_name["ours, float32 contiguous"] = our_step(**common)
    steps_by_name["ours + crop/flip"] = our_step(**common, **ours, augment=True)
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for i in range(warmup + steps):
        for name, step in steps_by_name.items():  # alternate: load changes hit every implementation alike
            _sync(dev)
            t = time.perf_counter()
            loss = step(x)
            _sync(dev)
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
            if not torch.isfinite(loss).item():
                raise RuntimeError(f"{name}: loss is not finite")
        print(f"  round {i + 1}/{warmup + steps}" + (" (warm-up)" if i < warmup else ""), flush=True)
    rows = []
    for name, ts in times.items():
        sec = float(np.median(ts))
        rows.append({"implementation": name, "s_per_step": sec, "img_s": batch / sec})
    table = pd.DataFrame(rows).set_index("implementation")
    if "official" in table.index:
        table["vs_official"] = table["img_s"] / table.loc["official", "img_s"]
    return table


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", default=None, help="a local copy of SparK's pretrain/ folder (omit: ours only)")
    ap.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    ap.add_argument("--size", type=int, default=224, help="input size (a multiple of 32)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=768, help="decoder width (official: 768)")
    ap.add_argument("--drop-path", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per implementation (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--check", action="store_true",
                    help="first compare ours with the official code on identical weights, input and mask (float64)")
    args = ap.parse_args(argv)
    if args.check:
        if not args.official:
            raise SystemExit("--check needs --official PATH")
        print("identical weights (float64):", check_against_official(load_official(args.official), arch=args.arch,
                                                                     width=args.width))
    table = run(args.official, arch=args.arch, size=args.size, batch=args.batch, width=args.width,
                drop_path=args.drop_path, steps=args.steps, warmup=args.warmup, device=args.device)
    print(f"SparK training step, {args.arch}, input {args.size}, batch {args.batch}, decoder width {args.width}, "
          f"device={args.device}, threads={torch.get_num_threads()}")
    print(table.round(3).to_markdown() if _has_tabulate() else table.round(3).to_string())
    return table


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
