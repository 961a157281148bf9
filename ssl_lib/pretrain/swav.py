"""SwAV: swapped assignments between views (Caron et al. 2020), as in Wolf et al. 2023 (Table 5).

Features of every crop are projected (2048-2048-128), L2-normalised and scored against 500
learnable prototypes; Sinkhorn-Knopp (3 iterations, epsilon 0.05) turns the scores of each of
the two large crops into soft cluster codes that the other crops must predict (cross-entropy at
temperature 0.1). Paper settings: multi-crop 2 x 224 px (scale 0.9-1.0) + 6 x 96 px (0.1-0.33)
from 512 px slices, Gaussian blur (p 0.5), no flip (Table 5 lists only blur and crop), LARS
lr 0.15, wd 1e-6, batch 128, prototypes frozen for the first 313 steps.

CT slices are grey: the normalised slice is repeated to 3 channels (as the paper), so the
exported encoder is a stock torchvision ResNet state dict.

Projection head and loss from lightly (``SwaVProjectionHead``, ``SwaVLoss``); LARS is lightly's, stepped
without host syncs (:mod:`ssl_lib.lars`).
The prototypes are a bias-free linear layer as in SwAV's code (lightly's ``SwaVPrototypes`` has
a bias), frozen as in the SwAV reference code by dropping their gradients for the first
``frozen_prototype_steps`` steps (rather than a ``requires_grad`` toggle, which DDP does not
allow mid-run), and re-normalised to the unit sphere before every step. LARS adapts and decays
every parameter (``exclude_norm_bias = False``, as SwAV's LARC and the authors' Bolts default);
``True`` keeps norms and biases out (the quick profile). Under DDP
the Sinkhorn sums run over all ranks (``sinkhorn_gather_distributed``) and the batch norms take
the global batch's statistics (``sync_batchnorm``). No feature queue (the paper's table lists none).

Shapes: large crops (B, 1, crop, crop) x 2, small crops (B, 1, small, small) x n_small ->
prototype scores (B, n_prototypes) per crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules.heads import SwaVProjectionHead
from torch import nn

from ..augment import ViewTransform
from ..models.backbone import build_backbone, num_features
from .base import MethodSpec, PretrainConfig, PretrainModule, scaled_sigma
from ..lars import LARS


@dataclass(frozen=True)
class SwAVConfig(PretrainConfig):
    """SwAV (Caron et al. 2020), paper Table 5: 2 x 224 (scale 0.9-1) + 6 x 96 (0.1-0.33), blur, crop.

    LARS lr 0.15, wd 1e-6, batch 128; 500 prototypes frozen for the first 313 steps; 3 Sinkhorn
    iterations (epsilon 0.05, temperature 0.1); projector 2048-2048-128; prototypes without bias
    (SwAV's code). Table 5 lists no flip, so the paper profile has ``flip_p = 0``. LARS adapts and
    decays every parameter, norms and biases included (``exclude_norm_bias = False``: SwAV's LARC
    and the authors' Bolts default).
    """

    method: str = "swav"
    batch_size: int = 128
    lr: float = 0.15
    weight_decay: float = 1e-6
    warmup_epochs: int = 10
    crop_scale: tuple[float, float] = (0.9, 1.0)
    flip_p: float = 0.0
    proj_hidden: int = 2048
    proj_dim: int = 128
    n_prototypes: int = 500
    frozen_prototype_steps: int = 313
    sinkhorn_iterations: int = 3
    sinkhorn_epsilon: float = 0.05
    temperature: float = 0.1
    n_small: int = 6
    small_size: int = 96
    small_scale: tuple[float, float] = (0.1, 0.33)
    exclude_norm_bias: bool = False

    def crop_sizes(self) -> dict[str, int]:
        """The large crops and, with ``n_small > 0``, the small ones."""
        return {**super().crop_sizes(), **({"small_size": int(self.small_size)} if self.n_small else {})}


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
        # Sinkhorn (exp of scores / 0.05) in float32 at least (under AMP), float64 stays float64
        return list(scores.to(torch.promote_types(scores.dtype, torch.float32)).chunk(len(crops)))

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


#: The paper profile is Supplementary Table 5; ``quick`` (64 px, ResNet18, ~110 s on 2 CPU cores for ~400
#: slices) and ``smoke`` (tests) use fewer and smaller crops, fewer prototypes and a higher learning rate.
#: No crop is below 33 px, so every crop reaches ResNet's last stage as at least 2 x 2
#: (:data:`ssl_lib.profiles.MIN_LAST_STAGE`; the small crops were 16 px in ``smoke`` and 32 px in ``quick``).
PROFILES = {
    "paper": SwAVConfig(),
    "quick": SwAVConfig(arch="resnet18", store_size=64, epochs=6, batch_size=32, every_n_epochs=3,
                        lr=0.3, warmup_epochs=1, crop_size=64, small_size=40, n_small=4,
                        blur_sigma=scaled_sigma(64), proj_hidden=512, n_prototypes=100,
                        frozen_prototype_steps=20, exclude_norm_bias=True),
    "smoke": SwAVConfig(arch="resnet18", store_size=32, epochs=2, batch_size=8, every_n_epochs=1,
                        lr=0.3, warmup_epochs=0, crop_size=48, small_size=40, n_small=2,
                        blur_sigma=scaled_sigma(48), proj_hidden=256, proj_dim=64, n_prototypes=16,
                        frozen_prototype_steps=4, exclude_norm_bias=True),
}

SUMMARY = (
    "**SwAV** (Caron et al. 2020) clusters the features of many crops of each slice online: the scores of the two "
    "large crops against 500 learnable prototypes are turned into balanced soft assignments by a few "
    "Sinkhorn-Knopp iterations, and every other crop must predict them (\"swapped prediction\"). The paper "
    "(Supplementary Table 5) uses 2 crops of 224 px (scale 0.9-1) and 6 of 96 px (scale 0.1-0.33) with Gaussian "
    "blur, LARS with lr 0.15, weight decay 1e-6, batch 128, 3 Sinkhorn iterations and prototypes frozen for the "
    "first 313 steps."
)

SPEC = MethodSpec(
    name="swav", label="SwAV", config_class=SwAVConfig, module_class=SwAV, profiles=PROFILES, summary=SUMMARY,
    paper={"params_m": 24.1, "gpu_memory_gb": 21.6, "hours": 11 * 24 + 14, "table": "Supplementary Table 5",
           "table1_note": "The paper's Table 1 lists 24.1 M for SwAV; ours is ResNet50 23.5 M + projector "
                          "2048-2048-128 4.5 M + 500 prototypes 0.06 M = 28.0 M. We could not reconstruct the "
                          "paper's count from the Bolts model (without the hidden projector layer it would be "
                          "23.8 M)."},
    step_cost=3.0,
)
