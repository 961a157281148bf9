"""BYOL: Bootstrap Your Own Latent (Grill et al. 2020), as pre-trained in Wolf et al. 2023 (Table 6).

An online network (ResNet -> projector -> predictor) predicts the projection of another view
made by a target network (ResNet -> projector), an exponential moving average of the online one
whose momentum follows a cosine from 0.996 to 1 over the run (BYOL; Bolts' ``BYOLMAWeightUpdate``).
Loss: negative cosine similarity of both directions, scaled by ``loss_scale`` (4: BYOL's sum of
``2 - 2 cos`` over both directions, up to a constant). Paper settings: 2 crops of 224 px from 512 px slices, flip,
Gaussian blur (always on view 1, 10 % on view 2, as BYOL), LARS lr 1e-3, wd 1.5e-6, batch 64.

CT slices are grey: the normalised slice is repeated to 3 channels (as the paper), so the
exported online encoder is a stock torchvision ResNet state dict.

Heads and loss come from lightly (``BYOLProjectionHead``, ``BYOLPredictionHead``,
``NegativeCosineSimilarity``, ``update_momentum``, ``cosine_schedule``) and the optimiser is
lightly's LARS (no weight decay or LARS scaling for norm layers and biases). Under DDP on GPUs
the batch norms become SyncBatchNorm (BYOL's global batch statistics).

Shapes: batch uint8 (B, 1, H, W) -> views (B, 1, crop, crop) -> features (B, F) -> projections
(B, proj_dim).
"""

from __future__ import annotations

import copy

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from ..augment import ViewTransform
from ..models.backbone import build_backbone, num_features
from .common import BYOLConfig, PretrainModule


class BYOL(PretrainModule):
    """BYOL on a torchvision ResNet; ``backbone`` (online) is the exported encoder."""

    config_class = BYOLConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        cfg = self.cfg
        self.backbone = build_backbone(cfg.arch)
        self.projection_head = BYOLProjectionHead(num_features(cfg.arch), cfg.proj_hidden, cfg.proj_dim)
        self.prediction_head = BYOLPredictionHead(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()
        self.view_transforms = nn.ModuleList(
            ViewTransform.standard(cfg.crop_size, cfg.crop_scale, flip_p=cfg.flip_p, blur_p=p, sigma=cfg.blur_sigma)
            for p in cfg.blur_p
        )

    def online_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projection_head, self.prediction_head]

    def make_optimizer(self, param_groups):
        return LARS(param_groups, lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay)

    def views(self, x, generator=None):
        return [t(x, generator) for t in self.view_transforms]

    def online(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) -> predictions (B, proj_dim)."""
        return self.prediction_head(self.projection_head(self.backbone(x)))

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) -> target projections (B, proj_dim), no gradient."""
        return self.projection_head_momentum(self.backbone_momentum(x))

    def momentum_now(self) -> float:
        return cosine_schedule(self.global_step, max(1, int(self.hparams.total_steps)),
                               self.cfg.momentum_start, self.cfg.momentum_end)

    def step_loss(self, x, generator=None):
        m = self.momentum_now()
        update_momentum(self.backbone, self.backbone_momentum, m=m)
        update_momentum(self.projection_head, self.projection_head_momentum, m=m)
        v0, v1 = (self.rgb(v) for v in self.views(x, generator))
        p0, p1 = self.online(v0), self.online(v1)
        z0, z1 = self.target(v0), self.target(v1)
        return 0.5 * self.cfg.loss_scale * (self.criterion(p0, z1) + self.criterion(p1, z0))
