"""Count host-device synchronisations, whoever makes them: ``with count_syncs() as syncs: ...``.

A training step that turns a device tensor into a Python value (``.item()``, ``float(t)``,
``int(t)``, ``bool(t)``, ``if t:``, ``t.tolist()``) makes the host wait for the GPU, which
empties the GPU's queue of work; Wolf et al. 2023's ResNet50 pre-trainings run for days, so a
few of them per step (lightly's LARS alone made one per parameter) cost hours. They cannot be
found by reading our own code only: they hide in libraries (lightly, timm, Lightning, torch's
optimisers). :func:`count_syncs` watches the *operators* every such call reduces to, with a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` (below autograd, so the backward pass
is watched too), and so sees them from any caller and on any device, the CPU included:

- ``aten._local_scalar_dense``: ``.item()``, ``float()``, ``int()``, ``bool()`` of a tensor;
- ``aten.is_nonzero``: ``bool()``/``if`` on a one-element tensor (when it reaches the dispatcher);
- ``aten.equal``: ``torch.equal`` (returns a Python bool);
- data-dependent output sizes, a sync on CUDA: ``aten.nonzero``, ``aten.masked_select``,
  ``aten.unique*``, boolean-mask indexing (``aten.index.Tensor`` with a bool index), and
  ``aten.repeat_interleave`` with tensor repeats;
- ``tolist``: ``Tensor.tolist`` converts in C++ without an operator on the CPU, so it is watched
  at the Python level (while the context is open, in every thread);
- ``to_host``: a copy from a non-CPU device to the CPU (``.cpu()``, ``.numpy()`` after it,
  ``.to("cpu")``, blocking ``copy_``). On a CPU run every tensor is on the host already, so
  these appear only on a GPU (:mod:`tools` GPU checks); the operator-level ones above are
  device-independent and appear on the CPU as on the GPU.

Not counted: CUDA-internal waits (``torch.cuda.synchronize``, events, allocator frees), which
have no operator.

The result (:class:`SyncCounts`) maps operator names to counts, lists each sync with the
innermost caller outside torch (``file:line``, library-relative), and splits them into the
segments marked by :meth:`SyncCounts.mark` (e.g. one per training step).
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HOST_SCALAR", "SYNC_OPS", "SyncCounts", "count_syncs", "optimizer_host_scalars"]

_aten = torch.ops.aten
#: Operators that always make the host wait for the device's result.
SYNC_OPS = {
    _aten._local_scalar_dense.default: "_local_scalar_dense",
    _aten.is_nonzero.default: "is_nonzero",
    _aten.equal.default: "equal",
}
#: Operators whose output size depends on the data: a sync on CUDA (the host must learn the size).
_SHAPE_OPS = {
    _aten.nonzero.default: "nonzero",
    _aten.masked_select.default: "masked_select",
    _aten._unique2.default: "unique",
    _aten.unique_dim.default: "unique",
    _aten.unique_consecutive.default: "unique",
}
#: The name under which reads of ``host`` tensors are recorded (not device syncs).
HOST_SCALAR = "host_scalar"
_HERE = str(Path(__file__).resolve())
_TORCH = str(Path(torch.__file__).resolve().parent)


def _site() -> str:
    """The innermost caller outside torch and this module, as ``package/…/file.py:line``."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(_TORCH) or name == _HERE or name.startswith("<")):
            break
        frame = frame.f_back
    if frame is None:
        return "?"
    path = Path(frame.f_code.co_filename)
    parts = path.parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1:]
            break
    else:
        if "ssl_lib" in parts:
            parts = parts[parts.index("ssl_lib"):]
        else:
            parts = parts[-2:]
    return f"{'/'.join(parts)}:{frame.f_lineno}"


@dataclass
class SyncCounts:
    """Syncs seen by :func:`count_syncs`: ``events`` is ``[(op, site, segment)]`` in order.

    ``segment`` is the label of the last :meth:`mark` before the event (``None`` before the first).
    """

    events: list[tuple[str, str, object]] = field(default_factory=list)
    segment: object = None
    labels: list = field(default_factory=list)

    def mark(self, label) -> None:
        """Start a new segment ``label`` (e.g. a training step's number): later syncs count for it."""
        self.segment = label
        self.labels.append(label)

    def add(self, op: str) -> None:
        self.events.append((op, _site(), self.segment))

    @property
    def by_op(self) -> Counter:
        """``Counter({op: count})`` over all events (``host_scalar`` reads included)."""
        return Counter(op for op, _, _ in self.events)

    @property
    def total(self) -> int:
        """The number of device syncs (``host_scalar`` reads excluded)."""
        return sum(op != HOST_SCALAR for op, _, _ in self.events)

    def in_segment(self, label) -> Counter:
        """``Counter({op: count})`` of the events after ``mark(label)`` and before the next mark."""
        return Counter(op for op, _, seg in self.events if seg == label)

    def per_segment(self) -> dict:
        """``{label: number of device syncs}`` for every marked segment, in order (0 where none)."""
        out = {label: 0 for label in self.labels}
        for op, _, seg in self.events:
            if seg in out and op != HOST_SCALAR:
                out[seg] += 1
        return out

    def sites(self, label=...) -> Counter:
        """``Counter({(op, site): count})``, of one segment if ``label`` is given."""
        return Counter((op, site) for op, site, seg in self.events if label is ... or seg == label)

    def __str__(self) -> str:
        lines = [f"{n:5d} x {op} at {site}" for (op, site), n in self.sites().most_common()]
        return f"{self.total} device sync(s)" + ("".join("\n  " + s for s in lines) if lines else "")


def _is_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _to_host(func, args, kwargs) -> bool:
    if func is _aten._to_copy.default:
        src, device = args[0], kwargs.get("device")
        return device is not None and torch.device(device).type == "cpu" and src.device.type not in ("cpu", "meta")
    if func is _aten.copy_.default:
        dst, src = args[0], args[1]
        return (isinstance(src, torch.Tensor) and dst.device.type == "cpu" and src.device.type not in ("cpu", "meta")
                and not (kwargs.get("non_blocking") or (len(args) > 2 and args[2])))
    return False


class _SyncMode(TorchDispatchMode):
    def __init__(self, counts: SyncCounts, host):
        super().__init__()
        self.counts, self.host = counts, host

    def _on_host(self, t) -> bool:
        if self.host is None or not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return False
        ptr = t.data_ptr()
        return any(h.data_ptr() == ptr for h in self.host())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = SYNC_OPS.get(func) or _SHAPE_OPS.get(func)
        if name is not None and args and self._on_host(args[0]):
            name = HOST_SCALAR
        if name is None:
            if func is _aten.index.Tensor and _is_bool_index(args):
                name = "index_bool_mask"
            elif func in (_aten.index_put.default, _aten.index_put_.default) and _is_bool_index(args):
                name = "index_put_bool_mask"
            elif func is _aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
                name = "repeat_interleave"
            elif _to_host(func, args, kwargs):
                name = "to_host"
        if name is not None:
            self.counts.add(name)
        return func(*args, **kwargs)


_tolist_lock = threading.Lock()
_tolist_watchers: list[SyncCounts] = []
_tolist_original = torch.Tensor.tolist


def _tolist(self, *args, **kwargs):
    for counts in list(_tolist_watchers):
        counts.add("tolist")
    return _tolist_original(self, *args, **kwargs)


def optimizer_host_scalars(optimizers) -> Callable[[], list[torch.Tensor]]:
    """A ``host`` for :func:`count_syncs`: the step counters of ``optimizers`` (a list, or a callable
    returning one, e.g. ``lambda: trainer.optimizers``) that live on the host in a GPU run too.

    torch's optimisers keep ``state[p]["step"]`` on the CPU unless the group is ``capturable`` or
    ``fused``, and timm's LAMB keeps ``group["step"]`` on the CPU: reading them (Adam's bias
    correction, LAMB's) is no device sync. On a CPU run every tensor is on the host, so only this
    list tells them apart from device tensors.
    """
    def host() -> list[torch.Tensor]:
        out = []
        for opt in (optimizers() if callable(optimizers) else optimizers):
            for group in opt.param_groups:
                if group.get("capturable") or group.get("fused"):
                    continue
                if isinstance(group.get("step"), torch.Tensor):
                    out.append(group["step"])
                for p in group["params"]:
                    step = opt.state.get(p, {}).get("step")
                    if isinstance(step, torch.Tensor):
                        out.append(step)
        return out
    return host


@contextmanager
def count_syncs(host: Callable[[], list[torch.Tensor]] | None = None) -> Iterator[SyncCounts]:
    """Count every host-device sync made inside the block (see the module docstring).

    ``host``: a callable returning tensors that stay on the host in a GPU run too (e.g.
    :func:`optimizer_host_scalars`); reading one of them is recorded as ``host_scalar``, which is
    no device sync and not counted by :meth:`SyncCounts.per_segment` or :attr:`SyncCounts.total`.

    The dispatch mode is thread-local (the autograd engine carries it into its threads); the
    ``tolist`` watch is process-wide while any ``count_syncs`` is open. Counting slows every
    operator (each passes through Python): use it in tests and checks, not in production runs.
    """
    counts = SyncCounts()
    with _tolist_lock:
        _tolist_watchers.append(counts)
        torch.Tensor.tolist = _tolist
    try:
        with _SyncMode(counts, host):
            yield counts
    finally:
        with _tolist_lock:
            _tolist_watchers.remove(counts)
            if not _tolist_watchers:
                torch.Tensor.tolist = _tolist_original
