"""Fine-tuning model: a backbone plus one linear layer (the paper's downstream model).

``Classifier(arch, num_classes)``: input float ``(B, 3, H, W)`` normalised with the store's
mean/std; output logits ``(B, num_classes)``. ``backbone.layer4`` is the last stage (the
Grad-CAM target layer). Saved checkpoints are plain dicts (:func:`save_classifier`) so that any
later step (Grad-CAM, a user's script) can rebuild the model without the training code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_path
from .backbone import build_backbone, num_features


class Classifier(nn.Module):
    def __init__(self, arch: str = "resnet50", num_classes: int = 2):
        super().__init__()
        self.arch, self.num_classes = arch, num_classes
        self.backbone = build_backbone(arch)
        self.head = nn.Linear(num_features(arch), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @property
    def target_layer(self) -> nn.Module:
        """Last convolutional stage, where Grad-CAM looks (as in the paper's Figure 4)."""
        return self.backbone.layer4[-1]


def save_classifier(model: Classifier, path: str | os.PathLike, **info: Any) -> Path:
    """Write ``{arch, num_classes, state_dict, **info}`` atomically (``info``: mean, std, task, ...).

    Floating-point tensors are stored in half precision (half the disk; the models are only read
    for Grad-CAM, after every prediction is written); :func:`load_classifier` returns float32.
    """
    path = Path(path)
    state = {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"arch": model.arch, "num_classes": model.num_classes, "state_dict": state, **info}, tmp)
    return path


def load_classifier(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """Rebuild a saved :class:`Classifier` (eval mode); returns ``(model, info)``."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = Classifier(ckpt["arch"], ckpt["num_classes"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model, info
