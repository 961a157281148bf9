"""Encoder initialisations for fine-tuning: random, our exported encoders, the authors' weights.

``load_init(init, source, arch)`` returns an :class:`EncoderInit` (a plain torchvision state
dict without ``fc`` plus where it came from); :func:`apply_init` puts it into a
:class:`~ssl_lib.models.classifier.Classifier` (or bare backbone). Three kinds of ``init``:

* ``"random"``: torchvision's default initialisation, the paper's "-" row in Table 2.
* a method name (one of :func:`ssl_lib.pretrain.registry.method_names`, or any folder under
  ``StudyPaths(out).pretrain``): our exported encoder ``encoders/epoch_XXXX.pt`` at a chosen
  epoch (default: the last one) with its ``.json`` card, read by
  :func:`ssl_lib.pretrain.encoder_file.load_encoder`.
* the path of a checkpoint the paper's authors released (Google Drive links in their README),
  or a method name plus that path as ``source``. Their four formats (top-level key, prefix of
  the backbone keys) are in :data:`RELEASED_FORMATS`. The authors load them with
  ``strict=False``; we drop the heads (keys that are not backbone keys, e.g. ``fc``,
  projection heads, prototypes) and then load strictly, so a checkpoint that lacks backbone
  weights or has the wrong shapes fails with a message saying which keys did not match.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .errors import SslCtError
from .models.backbone import build_backbone, encoder_state_dict, load_encoder_weights
from .paths import StudyPaths
from .pretrain import encoder_file

#: The authors' released checkpoints: method -> (top-level key, prefix of backbone keys).
RELEASED_FORMATS: dict[str, tuple[str, str]] = {
    "spark": ("module", "model."),
    "swav": ("state_dict", "model."),
    "mocov2": ("state_dict", "encoder_q."),
    "byol": ("state_dict", "online_network.encoder."),
}


class InitError(SslCtError, ValueError):
    """An initialisation cannot be found or does not fit the backbone; names the file."""


@dataclass
class EncoderInit:
    """Backbone weights for fine-tuning (``state is None``: random init).

    ``name``: the init as it appears in the results table; ``epoch``: pre-training epoch (None
    for random / released); ``source``: file it came from; ``card``: the encoder's JSON card;
    ``ignored``: checkpoint keys dropped as non-backbone (heads); ``notes``: anything repaired.
    """

    name: str
    state: dict[str, torch.Tensor] | None
    epoch: int | None = None
    source: str = ""
    card: dict = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- our encoders
def encoder_dir(output_dir: str | os.PathLike, method: str) -> Path:
    return StudyPaths(output_dir).pretrain(method) / "encoders"


def list_encoder_epochs(output_dir: str | os.PathLike, method: str) -> list[int]:
    """Epochs with an exported encoder of ``method``, ascending (empty if none)."""
    return encoder_file.list_encoder_epochs(StudyPaths(output_dir).pretrain(method))


def available_methods(output_dir: str | os.PathLike, methods: Sequence[str] | None = None) -> list[str]:
    """The methods (in ``methods`` order, default the registry's) that have at least one exported encoder."""
    if methods is None:
        from .pretrain.registry import method_names

        methods = method_names()
    return [m for m in methods if list_encoder_epochs(output_dir, m)]


def encoder_path(output_dir: str | os.PathLike, method: str, epoch: int) -> Path:
    return encoder_file.encoder_file(StudyPaths(output_dir).pretrain(method), epoch)


def load_exported(output_dir: str | os.PathLike, method: str, arch: str, epoch: int | str | None = None) -> EncoderInit:
    """Our exported encoder of ``method`` at ``epoch`` (``None``/``"last"``: the latest), read by
    :func:`ssl_lib.pretrain.encoder_file.load_encoder`."""
    epochs = list_encoder_epochs(output_dir, method)
    if not epochs:
        raise InitError(f"{encoder_dir(output_dir, method)}: no exported encoders of {method!r}; run its pre-training first")
    if epoch is None or epoch == "last":
        epoch = epochs[-1]
    if int(epoch) not in epochs:
        raise InitError(f"{encoder_dir(output_dir, method)}: no encoder for epoch {epoch} (have {epochs})")
    path = encoder_path(output_dir, method, int(epoch))
    try:
        net, card = encoder_file.load_encoder(path, arch)
    except encoder_file.EncoderFileError as err:
        raise InitError(str(err)) from None
    return EncoderInit(method, encoder_state_dict(net), int(epoch), str(path), card)


# --------------------------------------------------------------------------- released weights
def _torch_load(path: Path, trusted: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InitError(f"{path}: no such checkpoint") from None
    except Exception as err:  # noqa: BLE001 - any unpickling problem gets one clear message
        if not trusted:
            raise InitError(
                f"{path}: cannot be read as plain weights ({type(err).__name__}: {str(err)[:200]}). If you trust "
                "this file (it runs pickled code), pass trusted=True.") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise InitError(f"{path}: not a PyTorch checkpoint ({type(err).__name__}: {str(err)[:200]})") from None


def detect_released_format(ckpt: Mapping[str, Any]) -> str:
    """Which of :data:`RELEASED_FORMATS` ``ckpt`` is in (the one whose prefix covers most keys)."""
    best, best_n = None, 0
    for method, (top, prefix) in RELEASED_FORMATS.items():
        inner = ckpt.get(top) if isinstance(ckpt, Mapping) else None
        if not isinstance(inner, Mapping):
            continue
        n = sum(1 for k in inner if isinstance(k, str) and k.startswith(prefix) and k.endswith("conv1.weight"))
        if n > best_n:
            best, best_n = method, n
    if best is None:
        keys = list(ckpt)[:5] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise InitError(f"checkpoint matches none of the released formats {RELEASED_FORMATS} (top-level: {keys})")
    return best


def convert_released(ckpt: Mapping[str, Any], arch: str = "resnet50", fmt: str | None = None,
                     source: str = "<checkpoint>") -> EncoderInit:
    """A released checkpoint (already loaded) -> torchvision backbone state dict, loaded strictly.

    Keys under the format's prefix are stripped of it; keys that are not backbone keys (fc,
    heads) are dropped and listed in ``ignored``; missing ``num_batches_tracked`` buffers (not
    used in training or eval) are filled with 0 and noted. Any other missing backbone key or a
    shape mismatch raises :class:`InitError` listing them.
    """
    fmt = fmt or detect_released_format(ckpt)
    if fmt not in RELEASED_FORMATS:
        raise InitError(f"{source}: unknown released format {fmt!r}; choose one of {sorted(RELEASED_FORMATS)}")
    top, prefix = RELEASED_FORMATS[fmt]
    inner = ckpt.get(top) if isinstance(ckpt, Mapping) else None
    if not isinstance(inner, Mapping):
        raise InitError(f"{source}: no top-level key {top!r} ({fmt} format)")
    stripped = {k[len(prefix):]: v for k, v in inner.items()
                if isinstance(k, str) and k.startswith(prefix) and isinstance(v, torch.Tensor)}
    own = {k: v for k, v in build_backbone(arch).state_dict().items() if not k.startswith("fc.")}
    ignored = sorted(prefix + k for k in stripped if k not in own)
    ignored += sorted(k for k in inner if isinstance(k, str) and not k.startswith(prefix))
    state = {k: v for k, v in stripped.items() if k in own}
    notes = []
    missing = sorted(set(own) - set(state))
    nbt = [k for k in missing if k.endswith("num_batches_tracked")]
    for k in nbt:
        state[k] = torch.zeros_like(own[k])
    if nbt:
        notes.append(f"filled {len(nbt)} missing num_batches_tracked buffers with 0")
    missing = [k for k in missing if k not in nbt]
    bad_shape = sorted(k for k in state if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or bad_shape:
        raise InitError(
            f"{source}: {fmt} checkpoint does not fit torchvision {arch}: {len(missing)} backbone keys missing "
            f"(e.g. {missing[:4]}), {len(bad_shape)} with wrong shape (e.g. "
            f"{[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in bad_shape[:3]]}); "
            f"{len(state)} of {len(own)} matched under prefix {prefix!r} of {top!r}")
    state = {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in state.items()}
    return EncoderInit(fmt, state, None, source, {"format": fmt, "top_key": top, "prefix": prefix}, ignored, notes)


def load_released(path: str | os.PathLike, arch: str = "resnet50", fmt: str | None = None,
                  trusted: bool = False) -> EncoderInit:
    """Load one of the authors' released checkpoint files (see :func:`convert_released`)."""
    path = Path(path)
    init = convert_released(_torch_load(path, trusted), arch, fmt, str(path))
    init.name = f"{init.name}-released"
    return init


# --------------------------------------------------------------------------- entry points
def load_init(init: str | os.PathLike, output_dir_or_path: str | os.PathLike | None = None, arch: str = "resnet50",
              *, epoch: int | str | None = None, fmt: str | None = None, trusted: bool = False) -> EncoderInit:
    """Resolve an init name/path to an :class:`EncoderInit`.

    * ``load_init("random")``
    * ``load_init("spark", out, "resnet18", epoch=40)``: our exported encoder
    * ``load_init("spark", "/weights/spark.pth")`` or ``load_init("/weights/spark.pth")``: the
      authors' released checkpoint (``fmt`` forces the format; by default the method name if it
      is one of theirs, else detected).
    """
    init_s = str(init)
    if init_s == "random":
        return EncoderInit("random", None, None, "random")
    if Path(init_s).suffix in (".pt", ".pth", ".ckpt", ".tar") or Path(init_s).is_file():
        return load_released(init_s, arch, fmt, trusted)
    if output_dir_or_path is None:
        raise InitError(f"init {init_s!r} needs the output folder (our encoders) or a checkpoint path")
    source = Path(output_dir_or_path)
    if source.is_file():
        return load_released(source, arch, fmt or (init_s if init_s in RELEASED_FORMATS else None), trusted)
    return load_exported(source, init_s, arch, epoch)


def apply_init(model: nn.Module, init: EncoderInit) -> nn.Module:
    """Load ``init`` into ``model.backbone`` (a Classifier) or ``model`` (a backbone); random: no-op."""
    if init.state is None:
        return model
    backbone = getattr(model, "backbone", model)
    try:
        load_encoder_weights(backbone, init.state)
    except ValueError as err:
        raise InitError(f"{init.source}: {err}") from None
    return model
