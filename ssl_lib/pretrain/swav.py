"""SwAV: swapped assignments between views (Caron et al. 2020), as in Wolf et al. 2023 (Table 5).

Features of every crop are projected (2048-2048-128), L2-normalised and scored against 500
learnable prototypes; Sinkhorn-Knopp (3 iterations, epsilon 0.05) turns the scores of each of
the two large crops into soft cluster codes that the other crops must predict (cross-entropy at
temperature 0.1). Paper settings: multi-crop 2 x 224 px (scale 0.9-1.0) + 6 x 96 px (0.1-0.33)
from 512 px slices, Gaussian blur (p 0.5), no flip (Table 5 lists only blur and crop), LARS
lr 0.15, wd 1e-6, batch 128, prototypes frozen for the first 313 steps.

CT slices are grey: the normalised slice is repeated to 3 channels (as the paper), so the
exported encoder is a stock torchvision ResNet state dict.

Projection head and loss from lightly (``SwaVProjectionHead``, ``SwaVLoss``); LARS from lightly.
The prototypes are a bias-free linear layer as in SwAV's code (lightly's ``SwaVPrototypes`` has
a bias), frozen as in the SwAV reference code by dropping their gradients for the first
``frozen_prototype_steps`` steps (rather than a ``requires_grad`` toggle, which DDP does not
allow mid-run), and re-normalised to the unit sphere before every step. LARS adapts and decays
every parameter (``exclude_norm_bias = False``, as SwAV's LARC and the authors' Bolts default);
``True`` keeps norms and biases out (the quick profile). Under DDP
the Sinkhorn sums run over all ranks (``sinkhorn_gather_distributed``) and, on GPUs, the batch
norms become SyncBatchNorm. No feature queue (the paper's table lists none).

Shapes: large crops (B, 1, crop, crop) x 2, small crops (B, 1, small, small) x n_small ->
prototype scores (B, n_prototypes) per crop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules.heads import SwaVProjectionHead
from lightly.utils.lars import LARS
from torch import nn

from ..augment import ViewTransform
from ..models.backbone import build_backbone, num_features
from .common import PretrainModule, SwAVConfig


class SwAV(PretrainModule):
    """SwAV on a torchvision ResNet; ``backbone`` is the exported encoder."""

    config_class = SwAVConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        cfg = self.cfg
        self.backbone = build_backbone(cfg.arch)
        self.projection_head = SwaVProjectionHead(num_features(cfg.arch), cfg.proj_hidden, cfg.proj_dim)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.n_prototypes, bias=False)
        self.criterion = SwaVLoss(temperature=cfg.temperature, sinkhorn_iterations=cfg.sinkhorn_iterations,
                                  sinkhorn_epsilon=cfg.sinkhorn_epsilon)
        blur = cfg.blur_p[0] if cfg.blur_p else 0.0
        self.large = ViewTransform.standard(cfg.crop_size, cfg.crop_scale, flip_p=cfg.flip_p, blur_p=blur,
                                            sigma=cfg.blur_sigma)
        small_sigma = tuple(s * cfg.small_size / cfg.crop_size for s in cfg.blur_sigma)
        self.small = ViewTransform.standard(cfg.small_size, cfg.small_scale, flip_p=cfg.flip_p, blur_p=blur,
                                            sigma=small_sigma)

    def setup(self, stage: str) -> None:
        self.criterion.sinkhorn_gather_distributed = self.trainer.world_size > 1

    def online_modules(self):
        return [self.backbone, self.projection_head, self.prototypes]

    def param_groups(self):
        if self.cfg.exclude_norm_bias:
            return super().param_groups()
        return [{"params": self.trainable_parameters(), "name": "all"}]

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Project the prototype vectors (rows of the weight) back onto the unit sphere."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def make_optimizer(self, param_groups):
        return LARS(param_groups, lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay)

    def views(self, x, generator=None):
        large = [self.large(x, generator) for _ in range(2)]
        small = [self.small(x, generator) for _ in range(self.cfg.n_small)]
        return large + small

    def scores(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """Crops of one size, batched through the network together -> prototype scores per crop."""
        feats = self.projection_head(self.backbone(self.rgb(torch.cat(crops))))
        scores = self.prototypes(F.normalize(feats, dim=1))
        return list(scores.float().chunk(len(crops)))  # Sinkhorn (exp of scores / 0.05) in float32 under AMP

    def step_loss(self, x, generator=None):
        self.normalize_prototypes()
        views = self.views(x, generator)
        high = self.scores(views[:2])
        low = self.scores(views[2:]) if self.cfg.n_small else []
        return self.criterion(high, low)

    def on_after_backward(self) -> None:
        if self.global_step < self.cfg.frozen_prototype_steps:
            for p in self.prototypes.parameters():
                p.grad = None
