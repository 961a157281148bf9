"""The one backbone factory: a plain torchvision ResNet, classifier removed.

CT slices are grey; like the paper we feed them to the standard 3-channel stem by repeating the
channel (:func:`ssl_lib.data.store.normalize_batch`), so every encoder we export loads into a
stock ``torchvision.models.resnet50()`` (and the paper authors' released weights load into ours).

Shapes: input ``(B, 3, H, W)`` float; output ``(B, num_features)`` pooled features
(2048 for ResNet50, 512 for ResNet18/34).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torchvision import models

ARCHS = ("resnet18", "resnet34", "resnet50")


def build_backbone(arch: str = "resnet50", *, zero_init_residual: bool = False) -> models.ResNet:
    """A randomly initialised torchvision ResNet whose ``fc`` is ``nn.Identity``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown backbone {arch!r}; choose one of {ARCHS}")
    net = getattr(models, arch)(weights=None, zero_init_residual=zero_init_residual)
    net.fc = nn.Identity()
    return net


def num_features(arch: str) -> int:
    """Width of the pooled feature vector of ``arch``."""
    return 2048 if arch == "resnet50" else 512


def encoder_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Backbone weights as a plain torchvision state dict without ``fc.*`` keys (CPU tensors)."""
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items() if not k.startswith("fc.")}


def load_encoder_weights(backbone: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load an exported encoder state dict (no ``fc``) into ``backbone`` strictly.

    Raises ``ValueError`` naming missing/unexpected keys instead of torch's long message.
    """
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = {k for k in backbone.state_dict() if not k.startswith("fc.")}
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise ValueError(
            f"encoder weights do not fit this backbone: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    backbone.load_state_dict(state, strict=False)
