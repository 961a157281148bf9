"""LARS without host syncs: lightly's LARS (the Lightning Bolts one the authors ran), decided on the device.

Wolf et al. 2023 pre-train BYOL and SwAV with LARS (You et al. 2017) from Lightning Bolts, which
lightly ships as :class:`lightly.utils.lars.LARS`. Its step asks Python ``if p_norm != 0 and
g_norm != 0`` for every parameter with weight decay: two host-device syncs per parameter and
step (about 110 per BYOL step and 320 per SwAV step of the paper profile's ResNet-50), which
keep the GPU waiting. :class:`LARS` is lightly's class with a step that makes the same update
with tensor arithmetic, one vectorised (``torch._foreach_*``) pass per parameter group:

- groups with ``weight_decay == 0`` (norms and biases, see
  :meth:`ssl_lib.pretrain.base.PretrainModule.param_groups`): plain SGD with momentum, no LARS
  scaling and no decay (as lightly);
- other groups: ``d_p = (g + wd * p) * trust * |p| / (|g| + wd * |p| + eps)`` when both norms are
  non-zero, else ``d_p = g`` (as lightly: no decay, no scaling), then momentum
  ``buf = m * buf + (1 - dampening) * d_p`` (``buf = d_p`` at the first step), optionally
  Nesterov, and ``p -= lr * buf``.

timm's ``Lars`` is sync-free too but differs where a gradient is exactly zero: it still applies
the weight decay unscaled (``d_p = wd * p``), where lightly leaves the parameter alone.

Constructor, parameter groups and state (``momentum_buffer`` per parameter) are lightly's, so
checkpoints written with lightly's LARS resume here and vice versa.
"""

from __future__ import annotations

import torch
from lightly.utils.lars import LARS as _LightlyLARS

__all__ = ["LARS"]


class LARS(_LightlyLARS):
    """lightly's LARS (``lr``, ``momentum``, ``dampening``, ``weight_decay``, ``nesterov``,
    ``trust_coefficient``, ``eps``), stepped without host syncs (see the module docstring)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd, momentum, dampening = group["weight_decay"], group["momentum"], group["dampening"]
            if wd != 0:
                p_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                lars = p_norm / (g_norm + p_norm * wd + group["eps"]) * group["trust_coefficient"]
                # both norms non-zero: the LARS ratio; p == 0: ratio 1 (then g + wd * p == g);
                # g == 0: ratio 0 (then the update is g == 0), as lightly's ``if`` leaves it
                ratio = torch.where(g_norm == 0, 0.0, torch.where(p_norm == 0, 1.0, lars))
                d_ps = torch._foreach_add(grads, params, alpha=wd)
                torch._foreach_mul_(d_ps, list(ratio.to(d_ps[0].dtype).unbind()))
            else:
                d_ps = grads
            if momentum != 0:
                states = [self.state[p] for p in params]
                old = [i for i, s in enumerate(states) if "momentum_buffer" in s]
                if old:
                    bufs = [states[i]["momentum_buffer"] for i in old]
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, [d_ps[i] for i in old], alpha=1 - dampening)
                for i, s in enumerate(states):
                    if "momentum_buffer" not in s:
                        s["momentum_buffer"] = torch.clone(d_ps[i]).detach()
                bufs = [s["momentum_buffer"] for s in states]
                d_ps = torch._foreach_add(d_ps, bufs, alpha=momentum) if group["nesterov"] else bufs
            torch._foreach_add_(params, d_ps, alpha=-group["lr"])
        return loss
