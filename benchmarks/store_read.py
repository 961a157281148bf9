"""Slice-store read rate versus the paper's pipeline (decode one PNG per sample, every epoch).

Builds a store and the same slices as a PNG folder (the paper's pre-processing output, one file
per slice), then times one pass over both in batches, in one run:

* ``png``: a torch Dataset that opens, decodes and resizes one PNG per sample with PIL, converts
  it to a tensor, and a DataLoader that collates (what the paper's code does every epoch);
* ``store``: :class:`ssl_lib.data.store.SliceDataset` batches read from the memory-mapped store.

Usage: ``python benchmarks/store_read.py [--n 2000] [--source-size 512] [--size 224] [--batch 64]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ssl_lib.data.store import SliceRecord, make_loader, write_store  # noqa: E402


def ct_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth CT-like 8-bit image (body ellipse, two dark lungs, noise) that compresses like CT."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    img = np.full((size, size), 20.0)
    img[(xx / 0.42) ** 2 + (yy / 0.34) ** 2 < 1] = 110
    for cx in (-0.18, 0.18):
        img[((xx - cx) / 0.14) ** 2 + (yy / 0.22) ** 2 < 1] = 35 + rng.uniform(-5, 5)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


class PngDataset(torch.utils.data.Dataset):
    def __init__(self, files, size):
        self.files, self.size = files, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = Image.open(self.files[i]).convert("L")
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.array(img, dtype=np.uint8)).unsqueeze(0), 0


def time_pass(loader) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for images, _ in loader:
        n += images.shape[0]
    return time.perf_counter() - start, n


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--source-size", type=int, default=512)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slices = [ct_like(rng, args.source_size) for _ in range(args.n)]
        store = write_store((SliceRecord(s, f"p{i // 50}", -1, "train", str(i)) for i, s in enumerate(slices)),
                            tmp / "store", size=args.size, name="bench", salt="bench")
        png_src, png_sized = tmp / "png_src", tmp / "png_sized"
        png_src.mkdir(), png_sized.mkdir()
        for i, s in enumerate(slices):
            Image.fromarray(s).save(png_src / f"{i}.png")
            Image.fromarray(np.asarray(store.images[i])).save(png_sized / f"{i}.png")
        del slices
        loaders = {
            f"png {args.source_size}px decode+resize per sample": torch.utils.data.DataLoader(
                PngDataset(sorted(png_src.iterdir()), args.size), batch_size=args.batch, shuffle=True,
                num_workers=args.workers),
            f"png {args.size}px decode per sample": torch.utils.data.DataLoader(
                PngDataset(sorted(png_sized.iterdir()), args.size), batch_size=args.batch, shuffle=True,
                num_workers=args.workers),
            "slice store (memmap, whole batches)": make_loader(store.dataset(), args.batch, shuffle=True,
                                                               num_workers=args.workers),
        }
        rates = {}
        for name, loader in loaders.items():
            time_pass(loader)  # warm the page cache and the workers
            seconds, n = time_pass(loader)
            rates[name] = n / seconds
    store_rate = rates["slice store (memmap, whole batches)"]
    print(f"{args.n} slices, batch {args.batch}, output {args.size}px, {args.workers} workers")
    print(f"{'pipeline':<42} {'slices/s':>12} {'store is':>10}")
    for name, rate in rates.items():
        print(f"{name:<42} {rate:12.0f} {store_rate / rate:9.1f}x")
    return rates


if __name__ == "__main__":
    main()
