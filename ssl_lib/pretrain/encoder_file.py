"""Exported encoders: the one writer and the one reader of ``<run>/encoders/epoch_XXXX.pt`` + ``.json``.

A pre-training run (:func:`ssl_lib.pretrain.pretrain`) exports its encoder at checkpoint epochs:
``epoch_XXXX.pt`` is a plain torchvision ResNet state dict without ``fc`` (contiguous CPU
tensors, so it loads into a stock ``torchvision.models.resnet50()`` as the paper's encoders do)
and ``epoch_XXXX.json`` its card (method, epoch, step, arch, input size, the store's mean/std,
profile, precision). ``XXXX`` counts completed epochs. Fine-tuning reads them through
:mod:`ssl_lib.inits`, which calls :func:`load_encoder`.

Both files are written atomically (:mod:`ssl_lib.atomic`). This module needs only torch and the
backbone factory (no Lightning), so fine-tuning workers import it cheaply.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_path, atomic_write
from ..errors import SslCtError
from ..models.backbone import build_backbone, encoder_state_dict, load_encoder_weights

__all__ = ["EncoderFileError", "encoder_card", "encoder_file", "list_encoder_epochs", "load_encoder", "save_encoder",
           "torch_save_atomic"]

_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")


class EncoderFileError(SslCtError, ValueError):
    """An exported encoder is missing, lacks its card, or does not fit the backbone asked for; names the file."""


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a file object into a temporary file beside ``path``, fsynced, then renamed.

    Saving through a file object (not a file name) keeps the bytes independent of the temporary
    name: torch names the archive's folder after the file it is given.
    """
    path = Path(path)
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
    return path


def encoder_file(run_dir: str | os.PathLike, epoch: int) -> Path:
    """``<run_dir>/encoders/epoch_XXXX.pt``."""
    return Path(run_dir) / "encoders" / f"epoch_{int(epoch):04d}.pt"


def list_encoder_epochs(run_dir: str | os.PathLike) -> list[int]:
    """Epochs with an exported encoder under ``<run_dir>/encoders``, ascending (empty if none)."""
    folder = Path(run_dir) / "encoders"
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _EPOCH_RE.match(p.name)))


def encoder_card(module, epoch: int, profile: str) -> dict:
    """The card of ``module``'s encoder (a :class:`~ssl_lib.pretrain.base.PretrainModule`) at ``epoch``."""
    cfg = module.cfg
    return {
        "method": cfg.method, "epoch": int(epoch), "global_step": int(module.global_step), "arch": cfg.arch,
        "image_size": int(cfg.crop_size), "channels": 3, "mean": float(module.hparams.mean),
        "std": float(module.hparams.std), "store": module.hparams.store, "profile": profile,
        "precision": cfg.precision,
    }


def save_encoder(module, out_dir: str | os.PathLike, epoch: int, profile: str = "") -> Path:
    """Write ``<out_dir>/encoders/epoch_XXXX.pt`` (torchvision state dict without ``fc``) and its ``.json`` card."""
    path = encoder_file(out_dir, epoch)
    state = {k: v.contiguous() for k, v in encoder_state_dict(module.encoder).items()}  # not channels-last
    torch_save_atomic(state, path)
    atomic_write(path.with_suffix(".json"), json.dumps(encoder_card(module, epoch, profile), indent=2))
    return path


def load_encoder(path: str | os.PathLike, arch: str | None = None) -> tuple[nn.Module, dict]:
    """An exported encoder as a torchvision backbone (``fc`` = identity) with its card.

    ``arch``: the architecture the caller needs; a card naming another is an
    :class:`EncoderFileError` (as are missing weights or card and weights that do not fit).
    """
    path = Path(path)
    card_file = path.with_suffix(".json")
    if not path.is_file() or not card_file.is_file():
        raise EncoderFileError(f"{path}: encoder weights or their .json card are missing")
    try:
        card = json.loads(card_file.read_text())
        card_arch = card["arch"]
    except (ValueError, KeyError, TypeError) as err:
        raise EncoderFileError(f"{card_file}: not an encoder card ({type(err).__name__}: {err})") from None
    if arch is not None and card_arch != arch:
        raise EncoderFileError(f"{card_file}: encoder is a {card_arch}, {arch} was asked for")
    net = build_backbone(card_arch)
    try:
        load_encoder_weights(net, torch.load(path, map_location="cpu", weights_only=True))
    except (ValueError, RuntimeError) as err:
        raise EncoderFileError(f"{path}: {err}") from None
    return net, card
