"""PyTorch's process-wide numerics flags for one training run, set on entry and restored on exit.

Two flags decide speed against bit-reproducibility, and both are process-wide:

- ``torch.use_deterministic_algorithms`` (with Lightning's ``CUBLAS_WORKSPACE_CONFIG``): on the
  CPU the runs of this study are bit-identical for a seed (``tests/test_determinism.py``), so the
  CPU runs switch it on; on CUDA several kernels the ResNet needs have no deterministic version
  (``adaptive_avg_pool2d``'s backward raises), so it is off there.
- ``torch.backends.cudnn.benchmark``: cuDNN times its algorithms for each new input shape and
  keeps the fastest. The training loops feed fixed shapes (the paper's batch and crop sizes), so
  on CUDA it is on; on the CPU it does nothing and stays off (and ``cudnn.deterministic``
  follows the deterministic switch).

Lightning's ``Trainer(deterministic=..., benchmark=...)`` sets these when it is built and never
puts them back, so a CPU pre-training used to leave determinism on for the rest of the process:
CUDA fine-tuning in the same notebook kernel then failed. :func:`torch_flags` wraps a whole run
(pre-training and fine-tuning) and restores what it found, whatever the run set.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

from .precision import is_cuda

__all__ = ["run_flags", "torch_flags"]

_CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


def run_flags(accelerator: str | torch.device) -> dict[str, bool]:
    """``{"deterministic", "benchmark"}`` of a training run on ``accelerator`` (Lightning's Trainer arguments).

    >>> run_flags("cpu"), run_flags("cuda")
    ({'deterministic': True, 'benchmark': False}, {'deterministic': False, 'benchmark': True})
    """
    cuda = is_cuda(accelerator)
    return {"deterministic": not cuda, "benchmark": cuda}


def _state() -> tuple:
    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, os.environ.get(_CUBLAS))


def _restore(state: tuple) -> None:
    deterministic, warn_only, benchmark, cudnn_deterministic, cublas = state
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = cudnn_deterministic
    if cublas is None:
        os.environ.pop(_CUBLAS, None)
    else:
        os.environ[_CUBLAS] = cublas


@contextmanager
def torch_flags(*, deterministic: bool | None = None, benchmark: bool | None = None) -> Iterator[None]:
    """Inside: ``deterministic`` algorithms (and ``cudnn.deterministic``) and cuDNN ``benchmark`` as given
    (``None``: left as they are); on exit, also after an error, every flag as it was on entry."""
    state = _state()
    try:
        if deterministic is not None:
            torch.use_deterministic_algorithms(bool(deterministic))
            torch.backends.cudnn.deterministic = bool(deterministic)
        if benchmark is not None:
            torch.backends.cudnn.benchmark = bool(benchmark)
        yield
    finally:
        _restore(state)
