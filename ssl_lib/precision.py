"""Numeric precision and memory format of the training loops (the GPU path).

Wolf et al. 2023 trained on one RTX 3090 for about 10-14 days per pre-training (their Table 1).
On a current GPU most of that time goes to float32 convolutions; bfloat16 autocast with
channels-last tensors (cuDNN's fastest layout for convolutions) gives the same models much
faster, without a loss scaler (bfloat16 has float32's exponent range). So both loops default
to ``"bf16-mixed"`` on CUDA and to ``"32-true"`` on the CPU (see :func:`resolve_precision`);
pre-ampere GPUs without bfloat16 should ask for ``"16-mixed"`` (Lightning adds the scaler).

Precision names are Lightning's (``Trainer(precision=...)``); :func:`autocast` gives the matching
``torch.autocast`` context for the plain PyTorch loop of :mod:`ssl_lib.finetune`.
"""

from __future__ import annotations

import contextlib

import torch

#: Precisions the pre-training accepts (Lightning's names); ``"auto"`` resolves per accelerator.
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
_MIXED = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def is_cuda(accelerator: str | torch.device) -> bool:
    """Whether ``accelerator`` (Lightning's ``"auto"``/``"gpu"``/``"cuda"``/``"cpu"`` or a device) means CUDA.

    ``"auto"`` means CUDA when a GPU is visible; everything else is decided by the name alone.
    """
    if isinstance(accelerator, torch.device):
        return accelerator.type == "cuda"
    name = str(accelerator).lower()
    if name == "auto":
        return torch.cuda.is_available()
    return name in ("cuda", "gpu") or name.startswith("cuda:")


def resolve_precision(accelerator: str | torch.device, requested: str | None = "auto") -> str:
    """The precision a run uses: ``requested``, or for ``"auto"``/``None`` ``"bf16-mixed"`` on CUDA, ``"32-true"`` else.

    >>> resolve_precision("cuda"), resolve_precision("cpu"), resolve_precision("cpu", "bf16-mixed")
    ('bf16-mixed', '32-true', 'bf16-mixed')
    """
    if requested is None or requested == "auto":
        return "bf16-mixed" if is_cuda(accelerator) else "32-true"
    requested = str(requested)
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose 'auto' or one of {PRECISIONS}")
    return requested


def resolve_channels_last(device: str | torch.device, requested: bool | None = None) -> bool:
    """channels-last memory format: ``requested``, or for ``None`` on CUDA only."""
    return is_cuda(device) if requested is None else bool(requested)


def autocast(device: str | torch.device, precision: str):
    """``torch.autocast`` on ``device`` for a ``*-mixed`` precision, else a no-op context."""
    dtype = _MIXED.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
