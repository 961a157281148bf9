"""Batch norm with statistics over the global batch of all DDP ranks, on any device and without host syncs.

Wolf et al. 2023 pre-trained on one GPU, so every batch norm saw the whole batch. Under DDP each
rank sees only its share; :class:`SyncBatchNorm` makes the statistics those of the whole batch
again (as the official SparK code's ``SyncBatchNorm`` layers and Lightning's ``sync_batchnorm``
do). PyTorch has ``torch.nn.SyncBatchNorm``, but it runs only on GPUs (DDP refuses it on the
CPU, where this project is tested) and its forward makes host syncs (it drops empty ranks by
boolean indexing, torch issue 78549). :class:`SyncBatchNorm` here is a batch norm with the same
parameters and buffers (state dicts are unchanged) whose distributed training forward is
:func:`global_batch_norm`:

- each rank computes its count ``n_r``, mean and biased variance per channel (in float32 or
  wider, also under bf16 autocast);
- one ``all_gather`` with autograd (its backward sums the gradients of all ranks: one
  ``all_reduce``) gives every rank all of them;
- they are merged exactly (Chan et al.'s parallel variance: ``mean = sum(n_r mean_r) / N``,
  ``var = sum(n_r (var_r + (mean_r - mean)^2)) / N``), the input normalised with them, and the
  running statistics updated with the unbiased variance ``var * N / (N - 1)``, as
  ``nn.BatchNorm`` does for one device.

So the outputs, the gradients (after DDP averages them) and the running statistics equal those of
one device with the whole batch, up to float rounding. The statistics are plain tensor operations
(not cuDNN's fused kernels): a little slower per layer on a GPU than torch's, but no host sync.
Outside DDP (or in eval mode) it is ``nn.BatchNorm``.

:func:`convert_sync_batchnorm` turns every ``nn.BatchNorm*d`` of a model into it;
:class:`ssl_lib.pretrain.run.BatchNormSync` does so for Lightning DDP runs. SparK's masked batch
norm (:func:`ssl_lib.models.spark.masked_batch_norm`) calls it on the visible rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm", "distributed_world", "global_batch_norm",
           "revert_sync_batchnorm"]


def distributed_world(group=None) -> int:
    """The number of ranks of ``group`` (the default group) when torch.distributed is running, else 1."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class _AllGather(torch.autograd.Function):
    """``all_gather`` with autograd: (D,) on every rank -> (W, D); the backward sums each rank's gradient
    over all ranks (its rows of every rank's output gradient), as the gathered values feed every rank."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(out, tensor.contiguous(), group=group)
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


def global_batch_norm(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, group=None) -> torch.Tensor:
    """Training-mode batch norm of ``x`` (N, C, ...) with the statistics of all ranks' ``x`` together.

    Uses ``bn``'s weight, bias, eps, momentum and running buffers (updated in place); returns
    ``x``'s shape and dtype. Every rank must call it (a collective). See the module docstring.
    """
    C = x.shape[1]
    dtype = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(dtype)
    dims = [0, *range(2, x.ndim)]
    n = torch.full((1,), x.numel() // max(C, 1), dtype=dtype, device=x.device)
    mean = xf.mean(dims)
    var = xf.var(dims, unbiased=False)
    stats = _AllGather.apply(torch.cat([n, mean, var]), group or dist.group.WORLD)  # (W, 1 + 2C)
    counts, means, variances = stats[:, :1], stats[:, 1:C + 1], stats[:, C + 1:]
    total = counts.sum()
    g_mean = (counts * means).sum(0) / total
    g_var = (counts * (variances + (means - g_mean).square())).sum(0) / total
    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.to(dtype)
            bn.running_mean.lerp_(g_mean.detach().to(bn.running_mean.dtype), factor)
            unbiased = g_var.detach() * total / (total - 1).clamp(min=1)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)
    shape = [1, C] + [1] * (x.ndim - 2)
    scale = torch.rsqrt(g_var + bn.eps)
    y = (xf - g_mean.view(shape)) * scale.view(shape)
    if bn.affine:
        y = y * bn.weight.to(dtype).view(shape) + bn.bias.to(dtype).view(shape)
    return y.to(x.dtype)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm of any input (N, C, ...) whose distributed training forward is :func:`global_batch_norm`
    (any device, no host sync); otherwise (one process, eval mode) plain batch norm.

    ``plain_class``: the ``nn.BatchNorm*d`` it replaced (what :func:`revert_sync_batchnorm` restores).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group
        self.plain_class: type = nn.BatchNorm2d

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training and distributed_world(self.process_group) > 1:
            self._check_input_dim(input)
            return global_batch_norm(input, self, self.process_group)
        return super().forward(input)


def _swap(old: nn.modules.batchnorm._BatchNorm, new: nn.modules.batchnorm._BatchNorm):
    if old.affine:
        with torch.no_grad():
            new.weight, new.bias = old.weight, old.bias
    new.running_mean, new.running_var = old.running_mean, old.running_var
    new.num_batches_tracked = old.num_batches_tracked
    new.train(old.training)
    return new


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """``module`` with every ``nn.BatchNorm*d`` replaced by :class:`SyncBatchNorm` (the same parameters and
    buffers, so state-dict keys and values stay), as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = _swap(module, SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                          module.track_running_stats, process_group))
        out.plain_class = type(module)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`convert_sync_batchnorm`: each :class:`SyncBatchNorm` becomes its ``plain_class`` again."""
    out = module
    if isinstance(module, SyncBatchNorm):
        out = _swap(module, module.plain_class(module.num_features, module.eps, module.momentum, module.affine,
                                               module.track_running_stats))
    for name, child in module.named_children():
        out.add_module(name, revert_sync_batchnorm(child))
    return out
