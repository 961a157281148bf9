"""Worker processes for ingest: an ordered, bounded parallel map (decoding DICOM at scale).

LIDC-IDRI is 244,527 slices; decoding them is CPU work that scales with cores while the store
itself is written by one process in a fixed order. :class:`OrderedPool` runs a module-level
function over argument tuples in ``workers`` processes and hands the results back *in the order
the arguments came*, keeping at most ``window`` calls in flight (memory stays bounded), so the
store is byte-identical whatever the worker count. With ``workers == 1`` everything runs in the
calling process (no start-up cost, exceptions keep their chained causes).

A :class:`~ssl_lib.data.store.StoreError` raised by a call is *returned* as the result (the
reader decides whether to stop or skip the file); any other exception propagates.
Workers are forked from the calling process where the platform can (Linux; no start-up import
cost, as PyTorch's DataLoader workers), else started from a ``forkserver`` that has imported the
decoding modules once; each is limited to one thread (the parallelism is across processes).
"""

from __future__ import annotations

import os
from collections import deque
from typing import Callable, Iterable, Iterator

#: Below this many items per worker the start-up of worker processes does not pay off.
MIN_ITEMS_PER_WORKER = 256


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | str, n_items: int | None = None) -> int:
    """``"auto"``: one worker per available core, but no more than ``n_items / 256``; else ``int(workers) >= 1``."""
    if workers == "auto":
        n = available_cores()
        if n_items is not None:
            n = min(n, max(1, n_items // MIN_ITEMS_PER_WORKER))
        return n
    try:
        n = int(workers)
    except (TypeError, ValueError):
        raise ValueError(f"workers must be 'auto' or a positive integer, got {workers!r}") from None
    if n < 1:
        raise ValueError(f"workers must be 'auto' or a positive integer, got {workers!r}")
    return n


def _init_worker() -> None:
    """Every native thread pool (OpenMP, BLAS, torch's) at one thread: decoding is single-threaded
    work, and workers whose pools were sized for the whole machine (inherited through the fork)
    ran 2 workers at 0.42x one process on 2 cores (benchmarks/ingest_speed.py; 1.7-1.8x with this)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def _call(fn: Callable, args: tuple):
    from ssl_lib.data.store import StoreError

    try:
        return fn(*args)
    except StoreError as err:
        return err


class OrderedPool:
    """``imap(fn, args)``: results in argument order from ``workers`` processes (or inline for 1).

    Use as a context manager; ``preload`` names modules the forkserver imports once.
    """

    def __init__(self, workers: int, *, preload: tuple[str, ...] = ("ssl_lib.data.readers.lidc",)):
        self.workers = int(workers)
        self.executor = None
        if self.workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            if "fork" in mp.get_all_start_methods():
                ctx = mp.get_context("fork")
            else:  # pragma: no cover - macOS/Windows
                ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
                if ctx.get_start_method() == "forkserver":
                    ctx.set_forkserver_preload(list(preload))
            self.executor = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker)

    def imap(self, fn: Callable, args: Iterable[tuple], window: int | None = None) -> Iterator:
        """Results of ``fn(*a)`` for ``a`` in ``args``, in order (a ``StoreError`` is returned, not raised)."""
        if self.executor is None:
            for a in args:
                yield _call(fn, a)
            return
        window = window or 4 * self.workers
        pending: deque = deque()
        for a in args:
            pending.append(self.executor.submit(_call, fn, a))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None

    def __enter__(self) -> "OrderedPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["OrderedPool", "resolve_workers", "available_cores", "MIN_ITEMS_PER_WORKER"]
