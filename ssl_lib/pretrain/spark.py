"""SparK pre-training (Tian et al. 2023) as in Wolf et al. 2023 (Table 7), on Lightning.

The network (sparse ResNet encoder, densifying U-Net decoder, masked-patch loss) is
:class:`ssl_lib.models.spark.SparK`; this module only feeds it: a random resized crop (scale
0.67-1, as official SparK) and a horizontal flip of each slice, a random patch mask from a
seeded generator, and LAMB (timm) with warm-up and cosine annealing.

Input size: SparK pre-trains on its input size, so the crop is the input. The paper profile
crops and resizes to 512 px (Table 7: input 512, patch 32, mask ratio 60 %, batch 32, peak lr
2.5e-5 -- their "25e-6"); ``quick`` uses 96 px crops of the 64 px store (a 3 x 3 patch grid,
since 64 px would leave 2 x 2 patches) and ``smoke`` 64 px.

CT slices are grey: the normalised slice is repeated to 3 channels (as the paper), so SparK
reconstructs 3 identical channels and the exported encoder is a stock torchvision ResNet.
"""

from __future__ import annotations

import torch
from timm.optim import Lamb

from ..augment import ViewTransform
from ..models.backbone import build_backbone
from ..models.spark import SparK
from .common import PretrainModule, SparKConfig


class SparKModule(PretrainModule):
    """SparK around a torchvision ResNet; ``spark.encoder`` is the exported encoder."""

    config_class = SparKConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        cfg = self.cfg
        self.spark = SparK(build_backbone(cfg.arch), image_size=cfg.crop_size, mask_ratio=cfg.mask_ratio,
                           decoder_width=cfg.decoder_width, in_chans=3)
        self.view_transform = ViewTransform.standard(cfg.crop_size, cfg.crop_scale, flip_p=cfg.flip_p)

    @property
    def encoder(self):
        return self.spark.encoder

    def online_modules(self):
        return [self.spark]

    def make_optimizer(self, param_groups):
        for g in param_groups:
            g.setdefault("weight_decay", self.cfg.weight_decay)
        return Lamb(param_groups, lr=self.cfg.lr, betas=tuple(self.cfg.betas))

    def views(self, x, generator=None):
        return [self.view_transform(x, generator)]

    def step_loss(self, x, generator=None):
        (v,) = self.views(x, generator)
        mask = self.spark.random_mask(v.shape[0], device=v.device, generator=generator)
        return self.spark(self.rgb(v), mask)["loss"]

    @torch.no_grad()
    def preview(self, images, seed=0):
        """Original crop, masked input (masked patches black) and reconstruction, (B, 1, h, w) in [0, 1]."""
        x = self.normalize(images)
        g = self.step_generator(seed)
        (v,) = self.views(x, g)
        mask = self.spark.random_mask(v.shape[0], device=v.device, generator=g)
        out = self.spark(self.rgb(v), mask)
        visible = mask.float().repeat_interleave(self.spark.downsample_ratio, 2) \
                      .repeat_interleave(self.spark.downsample_ratio, 3)
        shown = self.denormalize(v)
        recon = self.denormalize(out["reconstruction"])
        vis = visible.cpu()
        return {"crop": shown, "masked input": shown * vis,
                "reconstruction": recon, "reconstruction + visible": recon * (1 - vis) + shown * vis}
