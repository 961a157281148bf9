"""MoCo v2: momentum contrast with an MLP head (Chen et al. 2020), as in Wolf et al. 2023 (Table 4).

A query encoder (ResNet -> MLP head 2048-2048-128) and a key encoder (its momentum copy, 0.999)
embed two views; InfoNCE (temperature 0.2) contrasts each query with its key against a queue of
keys of earlier batches (65,536 in the paper profile). Paper settings: 2 crops of 224 px from
512 px slices, flip, Gaussian blur (p 0.5), SGD lr 1e-4, momentum 0.9, batch 64.

CT slices are grey: the normalised slice is repeated to 3 channels (as the paper), so the
exported query encoder is a stock torchvision ResNet state dict.

The queue is our own ring buffer registered as *persistent* buffers (``queue``, ``queue_ptr``),
so it is saved in checkpoints and restored on resume (lightly's memory bank is not persistent).
Under DDP the keys of all ranks are gathered before they are enqueued (every rank holds the same
global queue) and the key batch is shuffled across ranks before the key encoder (MoCo's
shuffle-BN, used instead of SyncBatchNorm). Head from lightly (``MoCoProjectionHead``), momentum
updates with lightly's ``update_momentum``.

Shapes: views (B, 1, crop, crop) -> q, k (B, proj_dim) L2-normalised; queue (K, proj_dim).
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.models.modules.heads import MoCoProjectionHead
from lightly.models.utils import (batch_shuffle_distributed, batch_unshuffle_distributed, concat_all_gather,
                                  deactivate_requires_grad, update_momentum)
from torch import nn

from ..augment import ViewTransform
from ..models.backbone import build_backbone, num_features
from .common import MoCoConfig, PretrainError, PretrainModule


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class MoCoV2(PretrainModule):
    """MoCo v2 on a torchvision ResNet; ``backbone`` (query encoder) is the exported encoder."""

    config_class = MoCoConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        cfg = self.cfg
        self.backbone = build_backbone(cfg.arch)
        self.projection_head = MoCoProjectionHead(num_features(cfg.arch), cfg.proj_hidden, cfg.proj_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.view_transforms = nn.ModuleList(
            ViewTransform.standard(cfg.crop_size, cfg.crop_scale, flip_p=cfg.flip_p, blur_p=p, sigma=cfg.blur_sigma)
            for p in cfg.blur_p
        )

    def online_modules(self):
        return [self.backbone, self.projection_head]

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

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Key embeddings (B, D) of views ``x`` (B, 3, h, w), shuffled across ranks under DDP."""
        if _distributed():
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
        update_momentum(self.backbone, self.backbone_momentum, m=self.cfg.encoder_momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=self.cfg.encoder_momentum)
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
