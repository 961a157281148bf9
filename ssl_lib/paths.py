"""Where every step reads and writes, under one output folder (never committed).

``StudyPaths(out)`` is the single source of these conventions, used by the library, the
notebooks and the study runner::

    out/synthetic/            synthetic sources in the real layouts (LIDC tree, COVID-CT, npz, DICOM+CSV)
    out/stores/<name>/        slice stores (lidc, covid, organs, brain, or a user's name)
    out/pretrain/<method>/    checkpoints/, encoders/epoch_XXXX.pt + .json cards, metrics.csv
    out/finetune/             results.csv (one row per run), models/, curves/
    out/gradcam/              heat maps, correlations, localisation scores
    out/notebooks/            executed notebooks (the book's generated pages read these)
    out/timings.csv           per-step wall-clock time of the study runner

A relative output folder is taken relative to the repository root (:func:`resolve_output`), not
to the working folder: a notebook opened in JupyterLab runs in ``notebooks/`` and its default
``output_dir = "outputs/quick"`` must name the same folder the study runner wrote.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


#: The repository root (the folder holding ``ssl_lib/``, ``notebooks/`` and ``_config.yml``).
REPO = Path(__file__).resolve().parent.parent


def resolve_output(path: str | os.PathLike) -> Path:
    """``path`` itself if absolute, else the same path under the repository root (:data:`REPO`)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO / path


@dataclass(frozen=True)
class StudyPaths:
    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", resolve_output(root))

    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    def store(self, name: str) -> Path:
        return self.root / "stores" / name

    def pretrain(self, method: str) -> Path:
        return self.root / "pretrain" / method

    @property
    def finetune(self) -> Path:
        return self.root / "finetune"

    @property
    def results(self) -> Path:
        return self.finetune / "results.csv"

    @property
    def comparisons(self) -> Path:
        """The results step's verdicts (:func:`ssl_lib.stats.save_comparisons`), read by the book's intro."""
        return self.root / "verdicts" / "comparisons.csv"

    @property
    def gradcam(self) -> Path:
        return self.root / "gradcam"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def timings(self) -> Path:
        return self.root / "timings.csv"
