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
lightly's LARS stepped without host syncs (:mod:`ssl_lib.lars`; no weight decay or LARS scaling
for norm layers and biases). Under DDP the batch norms take the global batch's statistics
(``sync_batchnorm``; BYOL's and the paper's one-GPU statistics).

Shapes: batch uint8 (B, 1, H, W) -> views (B, 1, crop, crop) -> features (B, F) -> projections
(B, proj_dim).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from ..augment import ViewTransform
from ..models.backbone import build_backbone, num_features
from .base import MethodSpec, MomentumModule, PretrainConfig, scaled_sigma
from ..lars import LARS


@dataclass(frozen=True)
class BYOLConfig(PretrainConfig):
    """BYOL (Grill et al. 2020), paper Table 6: 2 crops 224, flip, blur; LARS lr 1e-3, wd 1.5e-6, batch 64.

    Heads as BYOL/Bolts: projector 2048-4096-256, predictor 256-4096-256; target momentum
    follows a cosine from ``momentum_start`` = 0.996 to ``momentum_end`` = 1 over the run (BYOL
    and the Bolts ``BYOLMAWeightUpdate`` the authors ran). Loss as BYOL/Bolts: the sum over both
    directions of ``2 - 2 cos`` (``loss_scale`` = 4 times the mean negative cosine of the two
    directions; only the gradient scale matters). Blur as BYOL: always on view 1, 10 % on view 2.
    """

    method: str = "byol"
    weight_decay: float = 1.5e-6
    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096
    momentum_start: float = 0.996
    momentum_end: float = 1.0
    loss_scale: float = 4.0
    blur_p: tuple[float, ...] = (1.0, 0.1)


class BYOL(MomentumModule):
    """BYOL on a torchvision ResNet; ``backbone`` (online) is the exported encoder."""

    config_class = BYOLConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        cfg = self.cfg
        self.backbone = build_backbone(cfg.arch)
        self.projection_head = BYOLProjectionHead(num_features(cfg.arch), cfg.proj_hidden, cfg.proj_dim)
        self.prediction_head = BYOLPredictionHead(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)
        self.make_momentum_copies("backbone", "projection_head")
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
        self.update_momentum_copies()
        v0, v1 = (self.rgb(v) for v in self.views(x, generator))
        p0, p1 = self.online(v0), self.online(v1)
        z0, z1 = self.target(v0), self.target(v1)
        return 0.5 * self.cfg.loss_scale * (self.criterion(p0, z1) + self.criterion(p1, z0))


#: The paper profile is Supplementary Table 6; ``quick`` (64 px, ResNet18, ~100 s on 2 CPU cores for
#: ~400 slices) and ``smoke`` (tests) raise the learning rate so that a few hundred steps move the weights.
PROFILES = {
    "paper": BYOLConfig(warmup_epochs=10),
    "quick": BYOLConfig(arch="resnet18", store_size=64, epochs=6, batch_size=32, every_n_epochs=3,
                        lr=0.2, weight_decay=1.5e-6, warmup_epochs=1, crop_size=64,
                        blur_sigma=scaled_sigma(64), proj_hidden=1024, pred_hidden=1024, proj_dim=128,
                        momentum_start=0.99, loss_scale=1.0),
    "smoke": BYOLConfig(arch="resnet18", store_size=32, epochs=2, batch_size=8, every_n_epochs=1,
                        lr=0.2, warmup_epochs=0, crop_size=48, blur_sigma=scaled_sigma(48),
                        proj_hidden=256, pred_hidden=256, proj_dim=64, momentum_start=0.99, loss_scale=1.0),
}

SUMMARY = (
    "**BYOL** (Grill et al. 2020) trains an *online* network (ResNet, projector, predictor) to predict the "
    "projection that a *target* network -- a slowly moving average of the online one -- gives to another "
    "augmented view of the same slice. No negative pairs are needed. The paper (Supplementary Table 6) uses two "
    "224 px crops of the 512 px LIDC slices with horizontal flip and Gaussian blur, LARS with lr 1e-3, weight "
    "decay 1.5e-6 and batch 64, for 900 epochs."
)

SPEC = MethodSpec(
    name="byol", label="BYOL", config_class=BYOLConfig, module_class=BYOL, profiles=PROFILES, summary=SUMMARY,
    paper={"params_m": 70.1, "gpu_memory_gb": 14.4, "hours": 10 * 24 + 12, "table": "Supplementary Table 6",
           "table1_note": "The paper's Table 1 lists 70.1 M trainable parameters for BYOL: the Bolts implementation "
                          "it used counts the target network, a full copy of the online network *including the "
                          "predictor* (2 x 35.0 M). Here the target is a momentum copy that is not trained by "
                          "gradients, so it appears under `momentum`."},
    step_cost=2.4,
)
