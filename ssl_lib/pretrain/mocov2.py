"""MoCo v2: momentum contrast with an MLP head (Chen et al. 2020), as in Wolf et al. 2023 (Table 4).

A query encoder (ResNet -> MLP head 2048-2048-128) and a key encoder (its momentum copy, 0.999)
embed two views; InfoNCE (temperature 0.2) contrasts each query with its key against a queue of
keys of earlier batches (65,536 in the paper profile). Paper settings: 2 crops of 224 px from
512 px slices, flip, Gaussian blur (p 0.5), SGD lr 1e-4, momentum 0.9, batch 64.

CT slices are grey: the normalised slice is repeated to 3 channels (as the paper), so the
exported query encoder is a stock torchvision ResNet state dict.

The queue is our own ring buffer registered as *persistent* buffers (``queue``, ``queue_ptr``),
so it is saved in checkpoints and restored on resume (lightly's memory bank is not persistent).
Under DDP the keys of all ranks are gathered before they are enqueued, in rank order, so every
rank holds the same global queue (and DDP need not re-broadcast it, :mod:`.run`), and the batch
norms take the global batch's statistics (``sync_batchnorm``, as the paper's single GPU with the
authors' Bolts code, which shuffles only across GPUs). With ``sync_batchnorm=False`` the key batch
is shuffled across ranks before the key encoder instead (MoCo's shuffle-BN). Head from lightly
(``MoCoProjectionHead``), momentum updates with lightly's ``update_momentum``.

Shapes: views (B, 1, crop, crop) -> q, k (B, proj_dim) L2-normalised; queue (K, proj_dim).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.models.modules.heads import MoCoProjectionHead
from lightly.models.utils import batch_shuffle_distributed, batch_unshuffle_distributed, concat_all_gather
from torch import nn

from ..augment import ViewTransform
from ..models.backbone import build_backbone, num_features
from ..models.syncbn import SyncBatchNorm
from .base import MethodSpec, MomentumModule, PretrainConfig, PretrainError, scaled_sigma


@dataclass(frozen=True)
class MoCoConfig(PretrainConfig):
    """MoCo v2 (Chen et al. 2020), paper Table 4: 2 crops 224, flip, blur; SGD lr 1e-4, momentum 0.9, batch 64.

    MLP head 2048-2048-128, queue of 65,536 keys, temperature 0.2, key-encoder momentum 0.999,
    weight decay 1e-4 (MoCo v2/Bolts defaults; the table lists none).
    """

    method: str = "mocov2"
    proj_hidden: int = 2048
    proj_dim: int = 128
    queue_size: int = 65536
    temperature: float = 0.2
    encoder_momentum: float = 0.999
    weight_decay: float = 1e-4
    crop_scale: tuple[float, float] = (0.2, 1.0)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class MoCoV2(MomentumModule):
    """MoCo v2 on a torchvision ResNet; ``backbone`` (query encoder) is the exported encoder."""

    config_class = MoCoConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        cfg = self.cfg
        self.backbone = build_backbone(cfg.arch)
        self.projection_head = MoCoProjectionHead(num_features(cfg.arch), cfg.proj_hidden, cfg.proj_dim)
        self.make_momentum_copies("backbone", "projection_head")
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.view_transforms = nn.ModuleList(
            ViewTransform.standard(cfg.crop_size, cfg.crop_scale, flip_p=cfg.flip_p, blur_p=p, sigma=cfg.blur_sigma)
            for p in cfg.blur_p
        )

    def online_modules(self):
        return [self.backbone, self.projection_head]

    def momentum_now(self) -> float:
        return self.cfg.encoder_momentum

    def make_optimizer(self, param_groups):
        for g in param_groups:
            g.setdefault("weight_decay", self.cfg.weight_decay)
        return torch.optim.SGD(param_groups, lr=self.cfg.lr, momentum=self.cfg.momentum)

    def param_groups(self):  # MoCo v2 decays every parameter (as the reference implementation)
        return [{"params": self.trainable_parameters(), "name": "all"}]

    def check_data(self, num_slices, store_path):
        if self.cfg.queue_size >= num_slices // 2:
            raise PretrainError(
                f"{store_path}: MoCo's queue of {self.cfg.queue_size} keys would hold a large part of the "
                f"{num_slices} slices, so positives reappear as negatives; use queue_size < {num_slices // 2}")

    def views(self, x, generator=None):
        return [t(x, generator) for t in self.view_transforms]

    def on_fit_start(self) -> None:
        # Lightning's strategy has converted the norms by now (sync_batchnorm under DDP)
        synced = (SyncBatchNorm, nn.SyncBatchNorm)
        self.shuffle_bn = not any(isinstance(m, synced) for m in self.backbone_momentum.modules())

    #: shuffle the key batch across ranks (MoCo's shuffle-BN): only when the batch norms are per rank
    shuffle_bn: bool = True

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Key embeddings (B, D) of views ``x`` (B, 3, h, w), shuffled across ranks under DDP with per-rank BN."""
        if _distributed() and self.shuffle_bn:
            x, unshuffle = batch_shuffle_distributed(x)
            k = self.projection_head_momentum(self.backbone_momentum(x))
            k = batch_unshuffle_distributed(k, unshuffle)
        else:
            k = self.projection_head_momentum(self.backbone_momentum(x))
        return F.normalize(k, dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (of all ranks) into the ring buffer, overwriting the oldest."""
        if _distributed():
            keys = concat_all_gather(keys.contiguous())
        size = self.queue.shape[0]
        keys = keys[-size:]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    def step_loss(self, x, generator=None):
        self.update_momentum_copies()
        vq, vk = (self.rgb(v) for v in self.views(x, generator))
        q = F.normalize(self.projection_head(self.backbone(vq)), dim=1)
        k = self.keys(vk)
        l_pos = (q * k).sum(1, keepdim=True)
        l_neg = q @ self.queue.clone().detach().t()
        logits = torch.cat([l_pos, l_neg], dim=1) / self.cfg.temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        loss = F.cross_entropy(logits, labels)
        self.enqueue(k)
        return loss


#: The paper profile is Supplementary Table 4 (lr 1e-4); ``quick`` (64 px, ResNet18, ~60 s on 2 CPU cores for
#: ~400 slices) and ``smoke`` (tests) raise the learning rate and shrink the queue to fit their stores.
PROFILES = {
    "paper": MoCoConfig(lr=1e-4),
    "quick": MoCoConfig(arch="resnet18", store_size=64, epochs=8, batch_size=32, every_n_epochs=4,
                        lr=0.06, crop_size=64, blur_sigma=scaled_sigma(64), proj_hidden=512,
                        queue_size=128, encoder_momentum=0.99),
    "smoke": MoCoConfig(arch="resnet18", store_size=32, epochs=2, batch_size=8, every_n_epochs=1,
                        lr=0.03, crop_size=48, blur_sigma=scaled_sigma(48), proj_hidden=256,
                        proj_dim=64, queue_size=16, encoder_momentum=0.99),
}

SUMMARY = (
    "**MoCo v2** (Chen et al. 2020) contrasts a *query* view of each slice with a *key* view made by a momentum "
    "copy of the encoder, against a large queue of keys of earlier batches as negatives (InfoNCE). The paper "
    "(Supplementary Table 4) uses two 224 px crops with horizontal flip and Gaussian blur, SGD with lr 1e-4, "
    "momentum 0.9 and batch 64; the queue holds 65,536 keys."
)

SPEC = MethodSpec(
    name="mocov2", label="MoCoV2", config_class=MoCoConfig, module_class=MoCoV2, profiles=PROFILES,
    summary=SUMMARY,
    paper={"params_m": 47.6, "gpu_memory_gb": 18.7, "hours": 10 * 24 + 7, "table": "Supplementary Table 4",
           "table1_note": "The paper's Table 1 lists 47.6 M for MoCo v2: both encoders counted with Bolts' default "
                          "linear 128-d head (2 x 23.8 M). Ours uses the MoCo v2 MLP head, so each of query and key "
                          "network has 28.0 M; only the query network is trained by gradients."},
    step_cost=1.7,
)
