"""SparK pre-training (Tian et al. 2023) as in Wolf et al. 2023 (Table 7), on Lightning.

The network (sparse ResNet encoder, densifying U-Net decoder, masked-patch loss) is
:class:`ssl_lib.models.spark.SparK`; this module only feeds it: a random resized crop (scale
0.67-1, as official SparK) and a horizontal flip of each slice, a random patch mask from a
seeded generator, and the official SparK optimisation (``utils/lr_control.py`` of the official
code): LAMB (timm) with the global gradient norm clipped at ``grad_clip``, the learning rate of
:func:`spark_lr_factor` (linear warm-up from ``lr_start`` x peak, cosine to ``lr_end`` x peak),
the weight decay of :func:`cosine_between` (``weight_decay`` -> ``weight_decay_end``), set per
step on every group by :class:`SparKSchedule`, and no weight decay for 1-d parameters, biases and
mask tokens (:meth:`SparKModule.param_groups`).

Input size: SparK pre-trains on its input size, so the crop is the input. The paper profile
crops and resizes to 512 px (Table 7: input 512, patch 32, mask ratio 60 %, batch 32, peak lr
2.5e-5 -- their "25e-6"); ``quick`` uses 96 px crops of the 64 px store (a 3 x 3 patch grid,
since 64 px would leave 2 x 2 patches) and ``smoke`` 64 px.

CT slices are grey: the normalised slice is repeated to 3 channels (as the paper), so SparK
reconstructs 3 identical channels and the exported encoder is a stock torchvision ResNet.
"""

from __future__ import annotations

import math

import torch
from timm.optim import Lamb

from ..augment import ViewTransform
from ..models.backbone import build_backbone
from ..models.spark import SparK
from .common import PretrainModule, SparKConfig


def spark_lr_factor(step: int, total_steps: int, warmup_steps: int, start: float = 0.005, end: float = 0.001) -> float:
    """Official SparK lr / peak at ``step``: ``start + (1 - start) * step / warmup`` during warm-up,
    then ``end + (1 - end) * (1 + cos(pi * t)) / 2`` with ``t`` going 0 -> 1 from the end of the
    warm-up to the last step (``total_steps - 1``)."""
    if step < warmup_steps:
        return start + (1 - start) * step / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
    return end + (1 - end) * (0.5 + 0.5 * math.cos(math.pi * t))


def cosine_between(step: int, total_steps: int, first: float, last: float) -> float:
    """A cosine from ``first`` (step 0) to ``last`` (step ``total_steps - 1``): SparK's weight decay."""
    t = min(1.0, step / max(1, total_steps - 1))
    return last + (first - last) * (0.5 + 0.5 * math.cos(math.pi * t))


class SparKSchedule(torch.optim.lr_scheduler.LRScheduler):
    """Sets lr and weight decay of every group per step, as official SparK's ``lr_wd_annealing``.

    A group's lr is ``peak x spark_lr_factor`` (x its ``lr_scale``, default 1); its weight decay
    is the cosine weight decay x its ``weight_decay_scale`` (0 for the no-decay group).
    """

    def __init__(self, optimizer, *, total_steps: int, warmup_steps: int, lr_start: float, lr_end: float,
                 weight_decay: float, weight_decay_end: float, last_epoch: int = -1):
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.lr_start, self.lr_end = float(lr_start), float(lr_end)
        self.wd, self.wd_end = float(weight_decay), float(weight_decay_end)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        factor = spark_lr_factor(step, self.total_steps, self.warmup_steps, self.lr_start, self.lr_end)
        wd = cosine_between(step, self.total_steps, self.wd, self.wd_end)
        for g in self.optimizer.param_groups:
            g["weight_decay"] = wd * g.get("weight_decay_scale", 1.0)
        return [base * factor * g.get("lr_scale", 1.0) for base, g in zip(self.base_lrs, self.optimizer.param_groups)]


class SparKModule(PretrainModule):
    """SparK around a torchvision ResNet; ``spark.encoder`` is the exported encoder."""

    config_class = SparKConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        cfg = self.cfg
        self.spark = SparK(build_backbone(cfg.arch), image_size=cfg.crop_size, mask_ratio=cfg.mask_ratio,
                           decoder=cfg.decoder, decoder_width=cfg.decoder_width, in_chans=3,
                           drop_path_rate=cfg.drop_path)
        self.view_transform = ViewTransform.standard(cfg.crop_size, cfg.crop_scale, flip_p=cfg.flip_p,
                                                     interpolation=cfg.interpolation)

    @property
    def encoder(self):
        return self.spark.encoder

    def online_modules(self):
        return [self.spark]

    def param_groups(self) -> list[dict]:
        """Official SparK's groups: no weight decay for 1-d parameters (norms), biases and mask tokens."""
        decay, no_decay = [], []
        for name, p in self.spark.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim <= 1 or name.endswith(".bias") or "mask_token" in name:
                no_decay.append(p)
            else:
                decay.append(p)
        return [{"params": decay, "name": "decay", "weight_decay_scale": 1.0},
                {"params": no_decay, "name": "no_decay", "weight_decay_scale": 0.0}]

    def make_optimizer(self, param_groups):
        for g in param_groups:
            g["weight_decay"] = self.cfg.weight_decay * g.get("weight_decay_scale", 1.0)
        return Lamb(param_groups, lr=self.cfg.lr, betas=tuple(self.cfg.betas), max_grad_norm=self.cfg.grad_clip)

    def configure_optimizers(self):
        cfg = self.cfg
        optimizer = self.make_optimizer(self.param_groups())
        scheduler = SparKSchedule(optimizer, total_steps=int(self.hparams.total_steps),
                                  warmup_steps=int(cfg.warmup_epochs) * int(self.hparams.steps_per_epoch),
                                  lr_start=cfg.lr_start, lr_end=cfg.lr_end,
                                  weight_decay=cfg.weight_decay, weight_decay_end=cfg.weight_decay_end)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def views(self, x, generator=None):
        return [self.view_transform(x, generator)]

    def step_loss(self, x, generator=None):
        (v,) = self.views(x, generator)
        mask = self.spark.random_mask(v.shape[0], device=v.device, generator=generator)
        return self.spark(self.rgb(v), mask, generator)["loss"]

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
