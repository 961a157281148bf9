"""A COVID-CT tree in the layout of the published repository (UCSD-AI4H/COVID-CT), at any size.

``Images-processed/CT_COVID|CT_NonCOVID/`` hold PNG and JPG images of varying size and mode (RGB,
RGBA) whose names carry the repository's quirks (paper-figure names, ``%`` before a running
number, several images per patient key); ``Data-split/COVID|NonCOVID/{train,val,test}CT_*.txt``
list them with a UTF-8 BOM and CRLF line ends. The images are random textures with a brighter
patch in the COVID class, so that a model can learn something and the numbers are not degenerate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")


def _name(cls: str, patient: int, k: int) -> str:
    if cls == "CT_COVID":
        return f"2020.0{1 + patient % 9}.{10 + patient}.2002{patient:04d}-p{patient % 30}-{k}%{k}.png"
    return f"{patient}%{k}.jpg" if k else f"{patient}.png"


def make_covid_tree(root: Path, per_split: dict[str, int] | None = None, images_per_patient: int = 2,
                    seed: int = 0) -> Path:
    """Write the tree under ``root``: ``per_split`` patients per class and split (default train 12,
    val 4, test 6), each with ``images_per_patient`` images; returns ``root``."""
    per_split = per_split or {"train": 12, "val": 4, "test": 6}
    rng = np.random.default_rng(seed)
    patient = 0
    for cls in ("CT_COVID", "CT_NonCOVID"):
        images = root / "Images-processed" / cls
        images.mkdir(parents=True, exist_ok=True)
        split_dir = root / "Data-split" / cls.replace("CT_", "")
        split_dir.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            names = []
            for _ in range(per_split[split]):
                patient += 1
                for k in range(images_per_patient):
                    name = _name(cls, patient, k)
                    h, w = int(rng.integers(60, 90)), int(rng.integers(60, 90))
                    img = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
                    if cls == "CT_COVID":
                        y, x = int(rng.integers(5, h - 25)), int(rng.integers(5, w - 25))
                        img[y:y + 20, x:x + 20] += 100
                    mode = "RGBA" if (patient + k) % 3 == 0 and name.endswith(".png") else "RGB"
                    if mode == "RGBA":
                        img = np.concatenate([img, np.full((h, w, 1), 255, np.uint8)], axis=2)
                    Image.fromarray(img, mode).save(images / name)
                    names.append(name)
            text = "\r\n".join(names) + "\r\n"
            (split_dir / f"{split}{cls}.txt").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    return root
