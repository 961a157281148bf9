"""The fine-tuning input path: batches indexed, normalised and augmented on the device, one step ahead.

Wolf et al. 2023 fine-tune a ResNet50 with Adam at batch 64 on 224 px slices. On a GPU the
step itself is short, so the input path must not hold it up. Here every part of it stays on the
training device and issues no blocking host-device copy:

- the training split's uint8 slices ``(N, 1, H, W)`` and labels ``(N,)`` are copied to the device
  once per run (:func:`to_device`); each epoch's order is a ``randperm`` drawn on the device from
  the run's seeded :class:`torch.Generator` (:func:`shuffled_batches`), so batches, labels and
  cached features are indexed with device index tensors;
- :func:`prepare_images` normalises a batch (:func:`ssl_lib.data.store.normalize_batch`, one grey
  channel), augments it there (the horizontal flip, or the authors' MONAI flip + rotation as one
  batched op, :class:`ssl_lib.finetune_augment.FlipRotate`; per-sample draws from the generator),
  repeats the channel to 3 and sets the memory format;
- :class:`Prefetcher` prepares batch ``i + 1`` before the caller trains on batch ``i``; on CUDA it
  does so on a side stream (the main stream waits on an event per batch), so preparing overlaps
  the step. On the CPU it only changes the order of the calls: the generator is drawn in the same
  order, so the results equal those without prefetching (tested).

Shapes: images uint8 ``(B, 1, H, W)`` -> float ``(B, 3, H, W)``; indices int64 ``(B,)`` on the device.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch

from .augment import uniform
from .data.store import normalize_batch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``: once per run, from page-locked memory on CUDA (an asynchronous copy)."""
    if t.device == device:
        return t
    return (t.pin_memory() if device.type == "cuda" and t.device.type == "cpu" else t).to(device, non_blocking=True)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's batches of indices into ``n`` items: a ``randperm`` on the generator's device, split."""
    return list(torch.randperm(n, generator=generator, device=generator.device).split(batch_size))


def random_mask(n: int, generator: torch.Generator, device: torch.device, p: float = 0.5) -> torch.Tensor:
    """Bool ``(n,)`` on ``device``, each ``True`` with probability ``p`` (one uniform draw per item)."""
    return uniform(n, 0.0, 1.0, device=device, generator=generator) < p


def prepare_images(images: torch.Tensor, *, mean: float, std: float, device: torch.device, channels_last: bool,
                   flip: bool = False, augment=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 ``(B, 1, H, W)`` -> the network's float input ``(B, 3, H, W)`` on ``device``.

    Normalised, then flipped left-right at random (``flip``) and/or augmented (``augment``: a
    callable ``(x, generator) -> x`` such as :class:`~ssl_lib.finetune_augment.FlipRotate`) on the
    single grey channel (3 times less work than on the repeated channels, the same result), then
    repeated to 3 channels, contiguous or channels-last.
    """
    x = normalize_batch(images.to(device, non_blocking=True), mean, std, channels=1)
    gen = generator if generator is not None else torch.default_generator
    if flip:
        x = torch.where(random_mask(x.shape[0], gen, x.device)[:, None, None, None], x.flip(-1), x)
    if augment is not None:
        x = augment(x, gen)
    x = x.expand(-1, 3, -1, -1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)


class Prefetcher:
    """Yields ``prepare(item)`` for each item, preparing the next one before the caller uses the current one.

    ``enabled=False`` prepares each item just before it is used (the plain loop). On CUDA the
    preparations run on a side stream; each prepared batch carries an event that the consumer's
    stream waits on, and its tensors are recorded on that stream (so the allocator does not hand
    their memory back too early). On the CPU there is no stream: only the order of the calls differs.
    """

    def __init__(self, device: torch.device | str, enabled: bool = True):
        self.device = torch.device(device)
        self.enabled = bool(enabled)
        self.stream = torch.cuda.Stream(self.device) if self.enabled and self.device.type == "cuda" else None

    def __call__(self, items: Iterable, prepare: Callable) -> Iterator:
        if not self.enabled:
            for item in items:
                yield prepare(item)
            return
        if self.stream is not None:  # what the main stream made so far (indices, weights) is ready for the side one
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        pending = None
        for item in items:
            ready = self._prepare(item, prepare)
            if pending is not None:
                yield self._hand_over(pending)
            pending = ready
        if pending is not None:
            yield self._hand_over(pending)

    def _prepare(self, item, prepare):
        if self.stream is None:
            return prepare(item), None
        with torch.cuda.stream(self.stream):
            out = prepare(item)
            event = torch.cuda.Event()
            event.record(self.stream)
        return out, event

    def _hand_over(self, pending):
        out, event = pending
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in _tensors(out):
                t.record_stream(current)
        return out
