"""SparK pre-training (Tian et al. 2023) as in Wolf et al. 2023 (Table 7), on Lightning.

The network (sparse ResNet encoder, densifying U-Net decoder, masked-patch loss) is
:class:`ssl_lib.models.spark.SparK`; this module only feeds it: a random resized crop (scale
0.67-1, as official SparK) and a horizontal flip of each slice, a random patch mask from a
seeded generator, and the official SparK optimisation (``utils/lr_control.py`` of the official
code): LAMB (timm) with the global gradient norm clipped at ``grad_clip``, the learning rate of
:func:`spark_lr_factor` (linear warm-up from ``lr_start`` x peak, cosine to ``lr_end`` x peak),
the weight decay of :func:`cosine_between` (``weight_decay`` -> ``weight_decay_end``), set per
step on every group by :class:`SparKSchedule`, and no weight decay for 1-d parameters, biases and
mask tokens (:meth:`SparKModule.param_groups`). Under DDP every batch norm, the masked ones
included, takes the statistics of all ranks (``sync_batchnorm``, as official SparK's synced
decoder and sparse norms).

Input size: SparK pre-trains on its input size, so the crop is the input. The paper profile
crops and resizes to 512 px (Table 7: input 512, patch 32, mask ratio 60 %, batch 32, peak lr
2.5e-5 -- their "25e-6"); ``quick`` uses 96 px crops of the 64 px store (a 3 x 3 patch grid,
since 64 px would leave 2 x 2 patches) and ``smoke`` 64 px.

CT slices are grey: the normalised slice is repeated to 3 channels (as the paper), so SparK
reconstructs 3 identical channels and the exported encoder is a stock torchvision ResNet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from timm.optim import Lamb

from ..augment import ViewTransform
from ..models.backbone import build_backbone
from ..models.spark import SparK
from .base import MethodSpec, PretrainConfig, PretrainModule


@dataclass(frozen=True)
class SparKConfig(PretrainConfig):
    """SparK (Tian et al. 2023), paper Table 7: input 512, patch 32, mask 60 %, flip + crop, batch 32.

    Peak lr 2.5e-5 (Table 7 writes "25e-6"; it equals SparK's base lr 2e-4 x 32 / 256). What the
    paper does not state follows the official SparK code the authors ran (``pretrain/main.py``,
    ``utils/lr_control.py``, ``utils/arg_util.py``, ``models/__init__.py``): LAMB (timm) with
    betas 0.9/0.95 and the global gradient norm clipped at ``grad_clip`` = 5; the lr warms up
    linearly from ``lr_start`` = 0.005 x peak over ``warmup_epochs`` = 40, then follows a cosine
    to ``lr_end`` = 0.001 x peak; the weight decay follows a cosine from ``weight_decay`` = 0.04
    to ``weight_decay_end`` = 0.2 over the run; mask tokens, biases and norm parameters (every
    1-d parameter) are out of weight decay; the ResNet-50 trains with drop path
    ``drop_path`` = 0.05; crops are resized ``interpolation`` = bicubic; the decoder is the
    official one (``decoder = "official"``, width 768). SparK pre-trains on its input size, so the
    crop *is* the input: a random resized crop of scale 0.67-1 resized back to 512 in the paper
    profile. ``crop_size`` must be a multiple of 32 (the ResNet's downsampling ratio).
    """

    method: str = "spark"
    batch_size: int = 32
    lr: float = 2.5e-5
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    lr_start: float = 0.005
    lr_end: float = 0.001
    grad_clip: float = 5.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: int = 40
    crop_size: int = 512
    crop_scale: tuple[float, float] = (0.67, 1.0)
    interpolation: str = "bicubic"
    blur_p: tuple[float, ...] = ()
    mask_ratio: float = 0.6
    decoder: str = "official"
    decoder_width: int | None = None
    drop_path: float = 0.05


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

    def draw_mask(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The patch mask (B, 1, h, w) of views ``v`` (B, 1, H, W): exactly ``num_visible`` visible per view."""
        return self.spark.random_mask(v.shape[0], device=v.device, generator=generator)

    def step_loss(self, x, generator=None):
        (v,) = self.views(x, generator)
        mask = self.draw_mask(v, generator)
        return self.spark(self.rgb(v), mask, generator, visible_per_sample=self.spark.num_visible)["loss"]

    @torch.no_grad()
    def preview(self, images, seed=0):
        """Original crop, masked input (masked patches black) and reconstruction, (B, 1, h, w) in [0, 1]."""
        x = self.normalize(images)
        g = self.step_generator(seed)
        (v,) = self.views(x, g)
        mask = self.spark.random_mask(v.shape[0], device=v.device, generator=g)
        out = self.spark(self.rgb(v), mask, visible_per_sample=self.spark.num_visible)
        visible = mask.float().repeat_interleave(self.spark.downsample_ratio, 2) \
                      .repeat_interleave(self.spark.downsample_ratio, 3)
        shown = self.denormalize(v)
        recon = self.denormalize(out["reconstruction"])
        vis = visible.cpu()
        return {"crop": shown, "masked input": shown * vis,
                "reconstruction": recon, "reconstruction + visible": recon * (1 - vis) + shown * vis}


#: The paper profile is Supplementary Table 7 (channels-last also on the CPU: a ResNet-50 SparK step at
#: 224 px ran ~20 % faster on 2 threads); ``quick`` crops 96 px (a 3 x 3 patch grid) with a light decoder
#: (~95 s on 2 CPU cores for ~400 slices); ``smoke`` (tests) 64 px.
PROFILES = {
    "paper": SparKConfig(channels_last=True),
    "quick": SparKConfig(arch="resnet18", store_size=64, epochs=7, batch_size=32, every_n_epochs=4,
                         lr=2e-3, warmup_epochs=1, crop_size=96, decoder="light", drop_path=0.0),
    "smoke": SparKConfig(arch="resnet18", store_size=32, epochs=2, batch_size=8, every_n_epochs=1,
                         lr=2e-3, warmup_epochs=0, crop_size=64, decoder_width=64, drop_path=0.0),
}

SUMMARY = (
    "**SparK** (Tian et al. 2023) is a masked autoencoder for convolutional networks: 60 % of the 32 x 32 patches "
    "of each slice are masked, a *sparse* ResNet encodes only the visible patches (masked positions stay empty "
    "through every layer), and a light U-Net decoder fills the holes with learned mask tokens and reconstructs "
    "the masked patches. The paper (Supplementary Table 7) trains on 512 px inputs with crop and flip, LAMB with "
    "cosine annealing to a peak lr of 2.5e-5 and batch 32. SparK trains on its input size, so here the crop is "
    "resized to the input size (512 px in the `paper` profile, 96 px in `quick`)."
)

SPEC = MethodSpec(
    name="spark", label="SparK", config_class=SparKConfig, module_class=SparKModule, profiles=PROFILES,
    summary=SUMMARY,
    paper={"params_m": 25.6, "gpu_memory_gb": 14.4, "hours": 14 * 24 + 4, "table": "Supplementary Table 7",
           "table1_note": "The paper's Table 1 lists 25.6 M for SparK: that is the ResNet50 alone as the official "
                          "SparK code counts it (with its 1000-class layer, column `encoder_with_fc`). The paper "
                          "profile trains the official decoder (width 768) and densify layers as well, 29.4 M "
                          "more, so `trainable` is 52.9 M; the `quick` profile's lighter decoder keeps the CPU run "
                          "short."},
    step_cost=2.6,
    preview_note="## Masked input and reconstruction\n\nFor a few slices: the training crop, the masked input the "
                 "sparse encoder sees (masked patches black), the reconstruction, and the reconstruction with the "
                 "visible patches pasted back. SparK learns each masked patch in units of that patch's own "
                 "mean and SD (its normalised-pixel loss), and the reconstruction is mapped back with them, as "
                 "SparK's own visualisation does. A model that has learned little predicts about 0 in those "
                 "units, which maps back to the patch's mean: flat squares of the right brightness, without "
                 "texture. How much texture a run's model does predict shows in how far its squares depart "
                 "from flat.",
)
