"""A fifth pre-training method in ONE file, for the registry tests: two views, a linear head, a cosine loss.

Registered with ``SSL_CT_EXTRA_METHODS=tests.toy_method`` (no edit of ``ssl_lib``). Not a useful
method (with positive pairs only it may collapse); it proves that a method module holding its
config, profiles, label, summary and ``SPEC`` is all the study needs.

Shapes: batch uint8 (B, 1, H, W) -> two views (B, 1, crop, crop) -> features (B, F) -> projections
(B, proj_dim); loss ``1 - cos(z0, z1)`` averaged over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_lib.augment import ViewTransform
from ssl_lib.models.backbone import build_backbone, num_features
from ssl_lib.pretrain.base import MethodSpec, PretrainConfig, PretrainModule


@dataclass(frozen=True)
class ToyConfig(PretrainConfig):
    """Two crops, flip, no blur; SGD; a linear projection to ``proj_dim``."""

    method: str = "toy"
    proj_dim: int = 32
    blur_p: tuple[float, ...] = (0.0, 0.0)


class ToyModule(PretrainModule):
    """Backbone + linear head; the loss pulls the two views' projections together."""

    config_class = ToyConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        cfg = self.cfg
        self.backbone = build_backbone(cfg.arch)
        self.head = nn.Linear(num_features(cfg.arch), cfg.proj_dim)
        self.view_transform = ViewTransform.standard(cfg.crop_size, cfg.crop_scale, flip_p=cfg.flip_p)

    def online_modules(self):
        return [self.backbone, self.head]

    def make_optimizer(self, param_groups):
        return torch.optim.SGD(param_groups, lr=self.cfg.lr, momentum=self.cfg.momentum,
                               weight_decay=self.cfg.weight_decay)

    def views(self, x, generator=None):
        return [self.view_transform(x, generator) for _ in range(2)]

    def step_loss(self, x, generator=None):
        z0, z1 = (self.head(self.backbone(self.rgb(v))) for v in self.views(x, generator))
        return (1 - F.cosine_similarity(z0, z1, dim=1)).mean()


PROFILES = {
    "smoke": ToyConfig(arch="resnet18", store_size=32, epochs=2, batch_size=8, every_n_epochs=1, lr=0.05,
                       crop_size=48),
    "quick": ToyConfig(arch="resnet18", store_size=64, epochs=2, batch_size=32, every_n_epochs=1, lr=0.05,
                       crop_size=64),
    "paper": ToyConfig(),
}

SPEC = MethodSpec(
    name="toy", label="Toy", config_class=ToyConfig, module_class=ToyModule, profiles=PROFILES,
    summary="**Toy** pulls two views of a slice together with a cosine loss (a registry test, not a method).",
    paper={}, step_cost=0.5,
)
