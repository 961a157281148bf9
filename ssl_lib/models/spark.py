"""SparK: sparse, hierarchical masked image modelling for a torchvision ResNet.

Tian et al. 2023, "Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked
Modeling" (ICLR). Our own compact implementation (no library has SparK):

- **Mask**: the image is cut into ``32 x 32`` patches (the encoder's downsample ratio); a bool
  mask ``(B, 1, h, w)``, ``h = w = image_size // 32``, ``True`` = visible, keeps exactly
  ``round(h * w * (1 - mask_ratio))`` patches per image (60 % masked by default).
- **Sparse encoder**: the *unchanged* ResNet is walked op by op (:meth:`SparK.sparse_features`);
  the masked image goes in, every conv/pool/BN output is multiplied by the mask upsampled to its
  resolution, and batch norm takes its batch statistics over visible positions only
  (:func:`masked_batch_norm`, which uses the BN module's own weight, bias and running buffers;
  under DDP over the visible positions of all ranks, as official SparK's synced sparse norms).
  So masked positions stay exactly zero and visible outputs never see masked pixels, and the
  encoder's ``state_dict`` stays a plain torchvision one (export it with ``encoder_state_dict``).
- **Densify**: each of the 4 stage maps (layer1..layer4) gets a masked BN, its masked
  positions are filled with a learned mask token (one per stage, trunc-normal std 0.02 in
  [-0.02, 0.02]), and a conv projects it to the decoder width of that scale (``d, d/2, d/4, d/8``
  from layer4 to layer1).
- **Decoder** (``decoder=``): decoding starts at layer4 (1/32); each up-block doubles the
  resolution and the next projected stage is added; two more up-blocks reach full resolution and
  a 1x1 conv gives ``in_chans``. Two designs:

  ``"official"`` -- as the official SparK code's ``LightDecoder`` (what Wolf et al. ran): width
  ``d = 768``; up-block ``ConvTranspose(k4, s2, p1, cin->cin)``, ``conv3x3 cin->cin``, BN,
  ReLU6, ``conv3x3 cin->cout``, BN; densify projections 3x3 (1x1 at the smallest scale, identity
  there if the encoder width equals ``d``); decoder convs trunc-normal (std 0.02, bias 0),
  transposed convs Kaiming-normal (fan-out), BN weight 1 / bias 0; the projections keep
  PyTorch's default init (as official).

  ``"light"`` -- our earlier, lighter design (``d`` = layer4 width / 4): up-block
  ``ConvTranspose(k2, s2)``, (``conv3x3``, BN, ReLU) twice, 1x1 projections, default init.
- **Drop path** (``drop_path_rate``): stochastic depth on each residual branch of the sparse
  encoder during training, rate rising linearly from 0 (first block) to ``drop_path_rate`` (last
  block), as timm's ResNet that official SparK trains (ResNet-50: 0.05). It has no parameters,
  so the encoder stays a plain torchvision ResNet.
- **Loss** (as official SparK): each 32 x 32 patch of the input, all channels together
  (``C * 32 * 32`` values), is normalised by its mean and unbiased standard deviation
  (``sqrt(var + 1e-6)``); the loss is the squared error to the decoder output, averaged over
  the patch's values, then over the masked patches.

Shapes: ``x`` (B, C, H, W) normalised images with ``H = W = image_size``; stage maps
(B, C_i, H / 2**(i+1), W / 2**(i+1)) for i = 1..4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .syncbn import SyncBatchNorm, distributed_world, global_batch_norm

DOWNSAMPLE_RATIO = 32


def masked_batch_norm(x: torch.Tensor, visible: torch.Tensor, bn: nn.BatchNorm2d,
                      rows: torch.Tensor | None = None) -> torch.Tensor:
    """Batch norm of ``x`` (B, C, H, W) with statistics over visible positions only.

    ``visible``: float (B, 1, H, W) of 0/1. In training the batch mean/(biased) variance over
    visible positions normalise ``x`` and update ``bn``'s running stats with its momentum
    (unbiased variance, as ``nn.BatchNorm2d``); in eval the running stats are used. Uses ``bn``'s
    own weight/bias/buffers (no new parameters). Output is zero at masked positions.

    ``rows``: the flat indices (into ``B*H*W``) of the visible positions (:meth:`_Masks.rows`).
    Given, training gathers the visible feature rows, normalises them with the native
    ``F.batch_norm`` and scatters them back into zeros, as official SparK's ``SparseBatchNorm2d``
    (faster than the masked sums below: measured ~1.5-1.9x for one layer1 norm on the CPU). If
    ``bn`` is a :class:`~ssl_lib.models.syncbn.SyncBatchNorm` (a DDP run, ``sync_batchnorm``) the
    statistics are those of the visible rows of all ranks together, as official SparK's
    ``SparseSyncBatchNorm2d`` (:func:`~ssl_lib.models.syncbn.global_batch_norm`); the masked-sum
    path without ``rows`` keeps per-rank statistics.
    """
    if (bn.training or not bn.track_running_stats) and rows is not None and rows.numel() > 1:
        return _gathered_batch_norm(x, rows, bn)
    if bn.training or not bn.track_running_stats:
        dtype = torch.promote_types(x.dtype, torch.float32)  # statistics in >= float32 (AMP-safe)
        xf, vf = x.to(dtype), visible.to(dtype)
        n = vf.sum()
        mean = (xf * vf).sum((0, 2, 3)) / n.clamp(min=1)
        var = ((xf - mean[None, :, None, None]).square() * vf).sum((0, 2, 3)) / n.clamp(min=1)
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                weight = momentum * (n > 1).to(bn.running_mean.dtype)  # skip the update when (almost) nothing is visible
                bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), weight)
                unbiased = var * n / (n - 1).clamp(min=1)
                bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), weight)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = torch.rsqrt(var + bn.eps)
    shift = -mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    y = x * scale[None, :, None, None].to(x.dtype) + shift[None, :, None, None].to(x.dtype)
    return y * visible


def _gathered_batch_norm(x: torch.Tensor, rows: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Training-mode batch norm of the visible rows ``rows`` of ``x`` (B, C, H, W), zeros elsewhere.

    A ``SyncBatchNorm`` ``bn`` (converted for DDP, :mod:`ssl_lib.models.syncbn`) takes its statistics
    over the visible rows of all ranks, as official SparK's ``SparseSyncBatchNorm2d``."""
    B, C, H, W = x.shape
    dtype = torch.promote_types(x.dtype, torch.float32)  # statistics in >= float32 (AMP-safe)
    flat = x.permute(0, 2, 3, 1).reshape(B * H * W, C)
    selected = flat.index_select(0, rows).to(dtype)
    if isinstance(bn, SyncBatchNorm) and bn.training and distributed_world(bn.process_group) > 1:
        y = global_batch_norm(selected, bn, bn.process_group)
        out = flat.new_zeros(B * H * W, C).index_copy(0, rows, y.to(x.dtype))
        return out.view(B, H, W, C).permute(0, 3, 1, 2)
    factor = 0.0
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    tracked = bn.track_running_stats and bn.training
    y = F.batch_norm(selected, bn.running_mean if tracked else None, bn.running_var if tracked else None,
                     bn.weight, bn.bias, training=True, momentum=factor, eps=bn.eps)
    out = flat.new_zeros(B * H * W, C).index_copy(0, rows, y.to(x.dtype))
    return out.view(B, H, W, C).permute(0, 3, 1, 2)


class _Masks:
    """The patch mask upsampled (nearest) to any feature resolution, cached per forward call."""

    def __init__(self, mask: torch.Tensor, dtype: torch.dtype, visible_per_sample: int | None = None):
        self.mask, self.dtype, self.cache = mask, dtype, {}
        self.row_cache: dict = {}
        self._count: int | None = None if visible_per_sample is None else mask.shape[0] * int(visible_per_sample)

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """Flat indices (into ``B*H*W``, ascending) of the visible positions at ``t``'s resolution.

        The number of visible patches is ``B x visible_per_sample`` when that is given (masks of
        :meth:`SparK.random_mask`: no host sync); otherwise it is read from the mask once per
        forward call (one host sync). The indices come from a stable sort, so no further sync is
        needed."""
        size = t.shape[-2:]
        if size not in self.row_cache:
            if self._count is None:
                self._count = int(self.mask.sum())
            r = size[0] // self.mask.shape[-2]
            hidden = (self.at(t)[:, 0] == 0).reshape(-1).to(torch.uint8)
            self.row_cache[size] = torch.argsort(hidden, stable=True)[: self._count * r * r]
        return self.row_cache[size]

    def at(self, t: torch.Tensor) -> torch.Tensor:
        size = t.shape[-2:]
        if size not in self.cache:
            r = size[0] // self.mask.shape[-2]
            self.cache[size] = self.mask.repeat_interleave(r, 2).repeat_interleave(r, 3).to(self.dtype)
        return self.cache[size]


def _sparse_block(block: nn.Module, x: torch.Tensor, masks: _Masks, drop_path: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One BasicBlock/Bottleneck (conv_i-bn_i-relu ..., downsample path, residual) kept sparse.

    ``drop_path`` > 0 drops the residual branch per sample (stochastic depth, as timm's ResNet)."""
    out, i = x, 1
    while hasattr(block, f"conv{i}"):
        out = getattr(block, f"conv{i}")(out)
        out = masked_batch_norm(out, masks.at(out), getattr(block, f"bn{i}"), masks.rows(out))
        i += 1
        if hasattr(block, f"conv{i}"):
            out = F.relu(out)
    if drop_path > 0:
        out = _drop_path(out, drop_path, generator)
    identity = x
    if block.downsample is not None:
        conv, bn = block.downsample
        identity = conv(x)
        identity = masked_batch_norm(identity, masks.at(identity), bn, masks.rows(identity))
    return F.relu(out + identity)


def _drop_path(x: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate``, scale the rest."""
    keep = 1.0 - rate
    gen_device = generator.device if generator is not None else x.device
    draw = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=gen_device).to(x.device)
    return x * ((draw < keep).to(x.dtype) / keep)


class _UpBlock(nn.Module):
    """Our light 2x up-block: ConvTranspose(k2) then (conv3x3-BN-ReLU) twice: (B, cin, h, w) -> (B, cout, 2h, 2w)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin, kernel_size=2, stride=2)
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class _OfficialUpBlock(nn.Module):
    """Official SparK's U-Net block: ConvTranspose(k4, s2, p1, cin->cin), conv3x3 cin->cin, BN, ReLU6,
    conv3x3 cin->cout, BN: (B, cin, h, w) -> (B, cout, 2h, 2w)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin, kernel_size=4, stride=2, padding=1, bias=True)
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True),
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


def _init_official_decoder(module: nn.Module) -> None:
    """Official SparK decoder init: convs trunc-normal std 0.02 (bias 0), transposed convs Kaiming
    normal (fan-out, ReLU; bias 0), batch norms weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


DECODERS = ("official", "light")


class SparK(nn.Module):
    """Sparse masked modelling around a torchvision ResNet (see the module docstring).

    ``encoder``: ResNet18/34/50 from ``build_backbone`` (its ``fc`` is set to ``nn.Identity``);
    ``decoder``: ``"official"`` (official SparK's LightDecoder) or ``"light"`` (ours);
    ``decoder_width``: width at 1/32 scale, halved per up-block, a multiple of 32 (default:
    768 for ``"official"`` as official SparK; layer4 width // 4 for ``"light"``, i.e. 512 for
    ResNet50, 128 for ResNet18/34); ``drop_path_rate``: stochastic depth of the encoder's last
    block during pre-training (official SparK, ResNet-50: 0.05).
    """

    def __init__(self, encoder: ResNet, *, image_size: int, mask_ratio: float = 0.6,
                 decoder_width: int | None = None, in_chans: int = 3, decoder: str = "official",
                 drop_path_rate: float = 0.0):
        super().__init__()
        if not isinstance(encoder, ResNet):
            raise ValueError(f"SparK needs a torchvision ResNet encoder, got {type(encoder).__name__}")
        blocks = {type(b) for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4) for b in layer}
        if not blocks <= {BasicBlock, Bottleneck}:
            raise ValueError(f"SparK supports ResNets built of BasicBlock/Bottleneck, got {blocks}")
        if image_size <= 0 or image_size % DOWNSAMPLE_RATIO:
            raise ValueError(f"image_size must be a positive multiple of {DOWNSAMPLE_RATIO}, got {image_size}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
        if decoder not in DECODERS:
            raise ValueError(f"unknown SparK decoder {decoder!r}; choose one of {DECODERS}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must lie in [0, 1), got {drop_path_rate}")
        widths = [getattr(layer[-1], "bn3", layer[-1].bn2).num_features
                  for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4)]
        if decoder_width is None:
            decoder_width = 768 if decoder == "official" else widths[-1] // 4
        d = decoder_width
        if d < 32 or d % 32:
            raise ValueError(f"decoder_width must be a positive multiple of 32, got {d}")
        encoder.fc = nn.Identity()
        self.encoder = encoder
        self.downsample_ratio = DOWNSAMPLE_RATIO
        self.image_size, self.mask_ratio, self.in_chans, self.decoder_width = image_size, mask_ratio, in_chans, d
        self.decoder_name = decoder
        self.grid = image_size // DOWNSAMPLE_RATIO
        self.num_visible = round(self.grid * self.grid * (1 - mask_ratio))
        if self.num_visible < 1:
            raise ValueError(f"mask_ratio {mask_ratio} leaves no visible patch on a {self.grid}x{self.grid} grid")
        n_blocks = sum(len(layer) for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4))
        self.drop_path_rate = float(drop_path_rate)
        #: per-block stochastic-depth rates, linear from 0 to ``drop_path_rate`` (timm's rule)
        self.block_drop_rates = [self.drop_path_rate * i / max(1, n_blocks - 1) for i in range(n_blocks)]
        dec_widths = [d // 8, d // 4, d // 2, d]  # decoder width at the scale of layer1..layer4
        self.densify_norms = nn.ModuleList(nn.BatchNorm2d(c) for c in widths)
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1)) for c in widths)
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
        # up-blocks: 1/32 -> 1/16 -> 1/8 -> 1/4 (U-Net merges) -> 1/2 -> 1 (head)
        chans = [d, d // 2, d // 4, d // 8, d // 16, d // 32]
        if decoder == "official":
            projs = []
            for stage, (c, w) in enumerate(zip(widths, dec_widths)):
                if stage == 3 and c == w:
                    projs.append(nn.Identity())
                else:
                    k = 1 if stage == 3 else 3  # 1x1 only at the smallest scale (layer4)
                    projs.append(nn.Conv2d(c, w, k, padding=k // 2))
            self.projs = nn.ModuleList(projs)
            self.decoder = nn.ModuleList(_OfficialUpBlock(a, b) for a, b in zip(chans[:-1], chans[1:]))
            self.head = nn.Conv2d(chans[-1], in_chans, 1)
            _init_official_decoder(self.decoder)
            _init_official_decoder(self.head)
        else:
            self.projs = nn.ModuleList(nn.Conv2d(c, w, 1) for c, w in zip(widths, dec_widths))
            self.decoder = nn.ModuleList(_UpBlock(a, b) for a, b in zip(chans[:-1], chans[1:]))
            self.head = nn.Conv2d(chans[-1], in_chans, 1)

    # ----------------------------------------------------------------------------- parameters
    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the ``encoder`` (the ResNet alone: what SparK reports, 25.6 M for ResNet-50
        with its fc), the ``densify`` layers (norms, mask tokens, projections), the ``decoder`` (up-blocks
        and head) and the ``total``."""
        count = lambda mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
        out = {"encoder": count([self.encoder]),
               "densify": count([self.densify_norms, self.projs]) + sum(t.numel() for t in self.mask_tokens),
               "decoder": count([self.decoder, self.head])}
        out["total"] = sum(out.values())
        return out

    # ----------------------------------------------------------------------------- masks
    def random_mask(self, batch_size: int, *, device=None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Bool (B, 1, h, w), ``True`` = visible, exactly ``self.num_visible`` visible per sample."""
        if device is None:
            device = self.mask_tokens[0].device
        L = self.grid * self.grid
        noise = torch.rand(batch_size, L, generator=generator,
                           device=generator.device if generator is not None else device)
        keep = noise.argsort(dim=1)[:, : self.num_visible].to(device)
        mask = torch.zeros(batch_size, L, dtype=torch.bool, device=device).scatter_(1, keep, True)
        return mask.view(batch_size, 1, self.grid, self.grid)

    def _check(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        want = (self.in_chans, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"SparK expects images of shape (B, {want[0]}, {want[1]}, {want[2]}), "
                             f"got {tuple(x.shape)} (image size must be {self.image_size}, a multiple of 32)")
        if mask is not None:
            if mask.dtype != torch.bool or tuple(mask.shape) != (x.shape[0], 1, self.grid, self.grid):
                raise ValueError(f"mask must be bool of shape ({x.shape[0]}, 1, {self.grid}, {self.grid}) "
                                 f"(True = visible), got {mask.dtype} {tuple(mask.shape)}")

    # ----------------------------------------------------------------------------- encoder
    def sparse_features(self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                        visible_per_sample: int | None = None) -> list[torch.Tensor]:
        """Sparse encoder forward: x (B,C,H,W), mask (B,1,h,w) bool -> [layer1..layer4] maps, zero where masked.

        In training with ``drop_path_rate > 0`` the residual branches are dropped per sample,
        drawing from ``generator`` (or the global RNG). ``visible_per_sample``: the number of
        visible patches of every sample if known (:meth:`random_mask`'s masks: ``num_visible``),
        which spares a host sync; ``None``: counted from the mask."""
        self._check(x, mask)
        enc, masks = self.encoder, _Masks(mask, x.dtype, visible_per_sample)
        x = x * masks.at(x)
        x = enc.conv1(x)
        x = F.relu(masked_batch_norm(x, masks.at(x), enc.bn1, masks.rows(x)))
        x = enc.maxpool(x)
        x = x * masks.at(x)
        feats, rates = [], iter(self.block_drop_rates)
        for layer in (enc.layer1, enc.layer2, enc.layer3, enc.layer4):
            for block in layer:
                rate = next(rates) if self.training else 0.0
                x = _sparse_block(block, x, masks, rate, generator)
            feats.append(x)
        return feats

    # ----------------------------------------------------------------------------- loss
    def _patch_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patches (B, C, h, p, w, p) of ``x`` in float32+, and their mean and sqrt(unbiased var + 1e-6)
        over each patch's C * p * p values (as official SparK), each (B, 1, h, 1, w, 1)."""
        B, C, H, W = x.shape
        p = self.downsample_ratio
        patches = x.to(torch.promote_types(x.dtype, torch.float32)).reshape(B, C, H // p, p, W // p, p)
        mean = patches.mean(dim=(1, 3, 5), keepdim=True)
        std = (patches.var(dim=(1, 3, 5), unbiased=True, keepdim=True) + 1e-6).sqrt()
        return patches, mean, std

    def patch_loss(self, pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE of ``pred`` (B,C,H,W) to the per-patch normalised ``x``, mean over masked patches."""
        target, mean, std = self._patch_stats(x)
        B, C, H, W = pred.shape
        p = self.downsample_ratio
        pred = pred.to(target.dtype).reshape(B, C, H // p, p, W // p, p)
        per_patch = (pred - (target - mean) / std).square().mean(dim=(1, 3, 5))  # (B, h, w)
        masked = (~mask[:, 0]).to(per_patch.dtype)
        return (per_patch * masked).sum() / masked.sum().clamp(min=1e-8)  # official: int count + 1e-8 in float32

    def _denormalise(self, pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _, mean, std = self._patch_stats(x)
        B, C, H, W = pred.shape
        p = self.downsample_ratio
        patches = pred.to(mean.dtype).reshape(B, C, H // p, p, W // p, p)
        return (patches * std + mean).reshape(x.shape).to(x.dtype)

    # ----------------------------------------------------------------------------- forward
    def decode(self, feats: list[torch.Tensor], mask: torch.Tensor,
               visible_per_sample: int | None = None) -> torch.Tensor:
        """Densify the 4 sparse stage maps and decode: -> (B, in_chans, H, W) in normalised-patch units."""
        masks = _Masks(mask, feats[0].dtype, visible_per_sample)
        dense = []
        for f, norm, token, proj in zip(feats, self.densify_norms, self.mask_tokens, self.projs):
            vis = masks.at(f)
            f = masked_batch_norm(f, vis, norm, masks.rows(f))
            dense.append(proj(torch.where(vis.bool(), f, token.to(f.dtype))))
        y = dense[3]
        for i, block in enumerate(self.decoder):
            y = block(y)
            if i < 3:
                y = y + dense[2 - i]
        return self.head(y)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None, visible_per_sample: int | None = None) -> dict:
        """x (B,C,H,W) -> {"loss": scalar, "reconstruction": (B,C,H,W) detached, image scale, "mask": (B,1,h,w)}.

        ``generator`` drives the drop-path draws (the mask, if ``None``, comes from the global RNG).
        ``visible_per_sample``: pass ``num_visible`` with masks of :meth:`random_mask` (no host
        sync then); ``None``: the count is read from ``mask``."""
        self._check(x, mask)
        if mask is None:
            mask, visible_per_sample = self.random_mask(x.shape[0], device=x.device), self.num_visible
        pred = self.decode(self.sparse_features(x, mask, generator, visible_per_sample), mask, visible_per_sample)
        loss = self.patch_loss(pred, x, mask)
        with torch.no_grad():
            reconstruction = self._denormalise(pred.detach(), x)
        return {"loss": loss, "reconstruction": reconstruction, "mask": mask}
