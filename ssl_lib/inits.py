"""Encoder initialisations for fine-tuning: random, our exported encoders, ImageNet, the authors' weights.

``load_init(init, source, arch)`` returns an :class:`EncoderInit` (a plain torchvision state
dict without ``fc`` plus where it came from); :func:`apply_init` puts it into a
:class:`~ssl_lib.models.classifier.Classifier` (or bare backbone). Four kinds of ``init``:

* ``"random"``: torchvision's default initialisation, the paper's "-" row in Table 2.
* a method name (one of :func:`ssl_lib.pretrain.registry.method_names`, or any folder under
  ``StudyPaths(out).pretrain``): our exported encoder ``encoders/epoch_XXXX.pt`` at a chosen
  epoch (default: the last one) with its ``.json`` card, read by
  :func:`ssl_lib.pretrain.encoder_file.load_encoder`.
* ``"imagenet"``: the supervised ImageNet baseline, a torchvision ResNet state dict the user
  downloaded (e.g. torchvision's published ``resnet50`` weights; nothing is ever downloaded
  here), plain or under ``"state_dict"``/``"model"``, read with ``weights_only=True``
  (:func:`load_imagenet`). Its 3-channel ``conv1`` loads unchanged, as the paper's encoders do:
  the grey CT channel is repeated to three (:func:`ssl_lib.data.store.normalize_batch`). A study
  given such a file (``--param imagenet_weights=...``) keeps its own copy,
  ``finetune/inits/imagenet.pt`` with a ``.json`` card holding the file's SHA-256 but never its
  path (:func:`use_imagenet_weights`); fine-tuning workers and cluster jobs read that copy.
* the path of a checkpoint the paper's authors released (Google Drive links in their README),
  or a method name plus that path as ``source``. Their four formats (top-level key, prefix of
  the backbone keys) are in :data:`RELEASED_FORMATS`. The authors load them with
  ``strict=False``; we drop the heads (keys that are not backbone keys, e.g. ``fc``,
  projection heads, prototypes) and then load strictly, so a checkpoint that lacks backbone
  weights or has the wrong shapes fails with a message saying which keys did not match.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .errors import SslCtError
from .atomic import atomic_write
from .baselines import IMAGENET
from .models.backbone import ARCHS, build_backbone, encoder_state_dict, load_encoder_weights
from .paths import StudyPaths
from .pretrain import encoder_file

#: The authors' released checkpoints: method -> (top-level key, prefix of backbone keys).
RELEASED_FORMATS: dict[str, tuple[str, str]] = {
    "spark": ("module", "model."),
    "swav": ("state_dict", "model."),
    "mocov2": ("state_dict", "encoder_q."),
    "byol": ("state_dict", "online_network.encoder."),
}


#: File name endings that make an init a weights file rather than a name.
WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar")


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
    """Load one of the authors' released checkpoint files (see :func:`convert_released`), or a
    torchvision ResNet state dict as the ImageNet init (:func:`convert_imagenet`) when ``fmt`` is
    ``None`` or ``"imagenet"``."""
    path = Path(path)
    ckpt = _torch_load(path, trusted)
    if fmt == IMAGENET or (fmt is None and torchvision_state(ckpt) is not None):
        return convert_imagenet(ckpt, arch, str(path))
    init = convert_released(ckpt, arch, fmt, str(path))
    init.name = f"{init.name}-released"
    return init


# --------------------------------------------------------------------------- ImageNet weights
#: Top-level keys under which checkpoints commonly wrap a model's state dict.
STATE_WRAPPERS = ("state_dict", "model")
#: Key prefixes a wrapped model adds (``nn.DataParallel``/DDP, ``torch.compile``).
STATE_PREFIXES = ("module.", "_orig_mod.")


def _is_resnet_state(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and isinstance(obj.get("conv1.weight"), torch.Tensor)
            and any(isinstance(k, str) and k.startswith("layer1.") for k in obj))


def torchvision_state(ckpt: Any) -> dict[str, torch.Tensor] | None:
    """The torchvision ResNet state dict in ``ckpt`` (plain, or under one of :data:`STATE_WRAPPERS`,
    keys possibly prefixed by one of :data:`STATE_PREFIXES`); ``None`` if it holds none."""
    candidates = [ckpt] + [ckpt.get(k) for k in STATE_WRAPPERS if isinstance(ckpt, Mapping)]
    for cand in candidates:
        if not isinstance(cand, Mapping):
            continue
        for prefix in ("",) + STATE_PREFIXES:
            state = {k[len(prefix):]: v for k, v in cand.items() if isinstance(k, str) and k.startswith(prefix)}
            if _is_resnet_state(state):
                return state
    return None


def _meta_state(arch: str) -> dict[str, torch.Tensor]:
    """``arch``'s backbone keys and shapes (no ``fc``), built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return {k: v for k, v in build_backbone(arch).state_dict().items() if not k.startswith("fc.")}


def _mismatch(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> tuple[list, list, list]:
    """(missing, unexpected, other shape) keys of ``state`` against ``own``; missing
    ``num_batches_tracked`` buffers do not count (they are filled, see :func:`convert_imagenet`)."""
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    shape = sorted(k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    return missing, unexpected, shape


def _first_difference(state, own, arch: str) -> str:
    """The first difference to name in a message (convolutions first: they tell the block type)."""
    missing, unexpected, shape = (sorted(keys, key=lambda k: (".conv" not in k and not k.startswith("conv"), k))
                                  for keys in _mismatch(state, own))
    if unexpected:
        return f"{unexpected[0]}, which a {arch} has not"
    if shape:
        k = shape[0]
        return f"{k} of shape {tuple(state[k].shape)}, where a {arch} has {tuple(own[k].shape)}"
    return f"no {missing[0]}, which a {arch} has"


def convert_imagenet(ckpt: Any, arch: str = "resnet50", source: str = "<weights>") -> EncoderInit:
    """A torchvision ResNet state dict (already loaded; see :func:`torchvision_state`) -> the ImageNet init.

    ``fc.*`` (the 1000 ImageNet classes) is dropped and listed in ``ignored``; missing
    ``num_batches_tracked`` buffers (unused in training and eval) are filled with 0 and noted;
    every other backbone key must be there with ``arch``'s shape. Weights for another ResNet, or
    no state dict at all, raise :class:`InitError` naming ``source`` and what is wrong.
    """
    if arch not in ARCHS:
        raise InitError(f"{source}: unknown backbone {arch!r}; choose one of {ARCHS}")
    state = torchvision_state(ckpt)
    if state is None:
        what = (f"a dict with top-level keys {[str(k) for k in list(ckpt)[:6]]}" if isinstance(ckpt, Mapping)
                else f"a {type(ckpt).__name__}")
        raise InitError(f"{source}: not a torchvision ResNet state dict (no conv1.weight and layer1.* keys, plain "
                        f"or under {list(STATE_WRAPPERS)}); the file holds {what}")
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise InitError(f"{source}: not a state dict of tensors ({len(bad)} other values, e.g. {bad[:3]})")
    ignored = sorted(k for k in state if k.startswith("fc."))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = _meta_state(arch)
    if any(_mismatch(state, own)):
        other = next((a for a in ARCHS if a != arch and not any(_mismatch(state, _meta_state(a)))), None)
        if other is not None:
            raise InitError(f"{source}: expects {arch} weights (the study's backbone), the file has {other} "
                            f"weights (e.g. {_first_difference(state, own, arch)})")
        missing, unexpected, shape = _mismatch(state, own)
        raise InitError(f"{source}: does not fit torchvision {arch}: {len(missing)} backbone keys missing (e.g. "
                        f"{missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(shape)} with "
                        f"another shape (e.g. {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in shape[:2]]})")
    notes = []
    nbt = [k for k in own if k not in state]  # num_batches_tracked only (anything else failed above)
    if nbt:
        state.update({k: torch.zeros((), dtype=torch.long) for k in nbt})
        notes.append(f"filled {len(nbt)} missing num_batches_tracked buffers with 0")
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous() for k, v in state.items()}
    return EncoderInit(IMAGENET, state, None, source, {"format": "torchvision", "arch": arch}, ignored, notes)


def load_imagenet(path: str | os.PathLike, arch: str = "resnet50") -> EncoderInit:
    """The ImageNet init from a torchvision ResNet weights file, read with ``weights_only=True``
    (never unpickling code): see :func:`convert_imagenet`."""
    path = Path(path)
    if not path.is_file():
        raise InitError(f"{path}: no such weights file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling problem gets one clear message
        raise InitError(f"{path}: not a file of plain weights (torch.load with weights_only=True: "
                        f"{type(err).__name__}: {str(err)[:200]})") from None
    return convert_imagenet(ckpt, arch, str(path))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex): what identifies a weights file in the study, never its path."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def imagenet_file(output_dir: str | os.PathLike) -> Path:
    """The study's copy of its ImageNet weights: ``finetune/inits/imagenet.pt`` (card: ``imagenet.json``)."""
    return StudyPaths(output_dir).finetune / "inits" / f"{IMAGENET}.pt"


def has_imagenet(output_dir: str | os.PathLike) -> bool:
    """Whether the study holds ImageNet weights (:func:`use_imagenet_weights` ran)."""
    path = imagenet_file(output_dir)
    return path.is_file() and path.with_suffix(".json").is_file()


def use_imagenet_weights(output_dir: str | os.PathLike, path: str | os.PathLike, arch: str) -> EncoderInit:
    """Make the torchvision weights file ``path`` the study's ImageNet init (what ``--param
    imagenet_weights`` does): checked (:func:`load_imagenet`), then copied to
    :func:`imagenet_file` with a card (arch, the file's SHA-256, notes; no path), unless the
    study holds that file already. Fine-tuning then reads the init by name
    (``load_init("imagenet", output_dir, arch)``), in any process, without the path.

    A study whose results already hold ImageNet runs of other weights is refused (it would mix them).
    """
    init = load_imagenet(path, arch)
    digest = file_sha256(path)
    target = imagenet_file(output_dir)
    card_file = target.with_suffix(".json")
    old = json.loads(card_file.read_text()) if has_imagenet(output_dir) else None
    if old is not None and old.get("sha256") == digest and old.get("arch") == arch:
        return init
    if old is not None:
        from .runs import read_results

        res = read_results(output_dir)
        if len(res) and (res["init"] == IMAGENET).any():
            raise InitError(f"{target}: the study's results hold runs of other ImageNet weights ({old.get('arch')}, "
                            f"SHA-256 {str(old.get('sha256'))[:12]}...) than the file given ({arch}, {digest[:12]}...); "
                            "start a new output folder, or remove the study's fine-tuning results first")
    target.parent.mkdir(parents=True, exist_ok=True)
    encoder_file.torch_save_atomic(init.state, target)
    atomic_write(card_file, json.dumps({"init": IMAGENET, "arch": arch, "format": "torchvision", "sha256": digest,
                                        "ignored": init.ignored, "notes": init.notes}, indent=2))
    return init


def load_study_imagenet(output_dir: str | os.PathLike, arch: str) -> EncoderInit:
    """The study's ImageNet init (its copy, :func:`imagenet_file`), loaded strictly into ``arch``."""
    path = imagenet_file(output_dir)
    if not has_imagenet(output_dir):
        raise InitError(f"{path.parent}: this study has no ImageNet weights; give them to the runner as "
                        "--param imagenet_weights=<a torchvision ResNet weights file>")
    try:
        net, card = encoder_file.load_encoder(path, arch)
    except encoder_file.EncoderFileError as err:
        raise InitError(str(err)) from None
    return EncoderInit(IMAGENET, encoder_state_dict(net), None, str(path), card)


# --------------------------------------------------------------------------- entry points
def load_init(init: str | os.PathLike, output_dir_or_path: str | os.PathLike | None = None, arch: str = "resnet50",
              *, epoch: int | str | None = None, fmt: str | None = None, trusted: bool = False) -> EncoderInit:
    """Resolve an init name/path to an :class:`EncoderInit`.

    * ``load_init("random")``
    * ``load_init("spark", out, "resnet18", epoch=40)``: our exported encoder
    * ``load_init("imagenet", out, "resnet18")``: the study's ImageNet weights
      (:func:`use_imagenet_weights`); ``load_init("imagenet", "/weights/resnet50.pth")`` or
      ``load_init("/weights/resnet50.pth")``: a torchvision ResNet weights file itself
      (:func:`load_imagenet`).
    * ``load_init("spark", "/weights/spark.pth")`` or ``load_init("/weights/spark.pth")``: the
      authors' released checkpoint (``fmt`` forces the format; by default the method name if it
      is one of theirs, else detected).
    """
    init_s = str(init)
    if init_s == "random":
        return EncoderInit("random", None, None, "random")
    if init_s != IMAGENET and (Path(init_s).suffix in WEIGHT_SUFFIXES or Path(init_s).is_file()):
        return load_released(init_s, arch, fmt, trusted)
    if output_dir_or_path is None:
        raise InitError(f"init {init_s!r} needs the output folder (our encoders) or a checkpoint path")
    source = Path(output_dir_or_path)
    if init_s == IMAGENET and (source.is_file() or source.suffix in WEIGHT_SUFFIXES):
        return load_imagenet(source, arch)
    if source.is_file():
        return load_released(source, arch, fmt or (init_s if init_s in RELEASED_FORMATS else None), trusted)
    if init_s == IMAGENET:
        return load_study_imagenet(source, arch)
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
