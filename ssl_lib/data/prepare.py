"""The pre-processing step: every source -> its slice store, synthetic where no data is given.

:func:`prepare_stores` is what ``notebooks/01_preprocess.ipynb`` calls. For each of the study's
four stores it takes the user's source when one is given (LIDC-IDRI tree, COVID-CT repository,
OrganSMNIST ``.npz``, folder of DICOM/PNG slices with a labels CSV) and the built-in synthetic
counterpart otherwise, and builds the store once: an existing complete store with the same
settings is reused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..paths import StudyPaths
from .build import build_store
from .intensity import BRAIN_WINDOW
from .store import SliceStore

#: Store names of the study, in order.
STORE_NAMES = ("lidc", "covid", "organs", "brain")


@dataclass(frozen=True)
class DataProfile:
    """Image sizes of the stores (pixels, square). ``lidc`` feeds pre-training, the rest fine-tuning."""

    lidc_size: int
    task_size: int
    synthetic: str  # synthetic data set size (ssl_lib.data.synthetic.PROFILES)


PROFILES = {
    "smoke": DataProfile(lidc_size=32, task_size=32, synthetic="smoke"),
    "quick": DataProfile(lidc_size=64, task_size=64, synthetic="quick"),
    # the paper: LIDC slices as 512 x 512 input (pre-training crops 224), tasks resized to 224
    "paper": DataProfile(lidc_size=512, task_size=224, synthetic="quick"),
}


def _profile(profile: str) -> DataProfile:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[profile]


def prepare_stores(
    output_dir: str | os.PathLike,
    profile: str = "quick",
    *,
    lidc_root: str | None = None,
    covid_root: str | None = None,
    organs_npz: str | None = None,
    brain_root: str | None = None,
    brain_labels: str | None = None,
    image_size: int | None = None,
    skip_bad: bool = False,
    seed: int = 0,
    rebuild: bool = False,
    progress: bool = True,
) -> dict[str, SliceStore]:
    """Build (or reuse) the four stores under ``StudyPaths(output_dir).store(name)``.

    Any source left empty is replaced by the synthetic data set (written once under
    ``output_dir/synthetic``). ``image_size`` overrides the profile's task image size.
    """
    paths = StudyPaths(output_dir)
    prof = _profile(profile)
    task_size = image_size or prof.task_size
    synthetic = None
    if not all([lidc_root, covid_root, organs_npz, brain_root]):
        from .synthetic import make_synthetic

        synthetic = make_synthetic(paths.synthetic, profile=prof.synthetic, seed=seed, progress=progress)
    if brain_root and not brain_labels:
        brain_labels = str(Path(brain_root) / "labels.csv")

    plans = {
        "lidc": dict(kind="lidc", source=lidc_root or synthetic.lidc, size=prof.lidc_size),
        "covid": dict(kind="covid", source=covid_root or synthetic.covid, size=task_size,
                      masks_root=None if covid_root else synthetic.covid_masks),
        "organs": dict(kind="medmnist", source=organs_npz or synthetic.organs_npz, size=task_size),
        "brain": dict(kind="folder", source=brain_root or synthetic.brain, size=task_size,
                      labels_csv=brain_labels or synthetic.brain_labels,
                      masks_root=None if brain_root else synthetic.brain_masks,
                      window=BRAIN_WINDOW, class_names=["no hemorrhage", "hemorrhage"]),
    }
    stores = {}
    for name, plan in plans.items():
        out = paths.store(name)
        synthetic_source = plan["source"] is not None and synthetic is not None and str(plan["source"]).startswith(str(synthetic.root))
        signature = {"source": str(plan["source"]), "size": plan["size"], "synthetic": synthetic_source}
        meta_file = out / "meta.json"
        if not rebuild and meta_file.exists() and json.loads(meta_file.read_text()).get("signature") == signature:
            stores[name] = SliceStore(out)
            continue
        options = {k: v for k, v in plan.items() if k not in ("kind", "source", "size") and v is not None}
        stores[name] = build_store(plan["kind"], plan["source"], out, size=plan["size"], skip_bad=skip_bad,
                                   split_seed=seed, progress=progress, overwrite=True,
                                   extra_meta={"synthetic": synthetic_source, "signature": signature}, **options)
    return stores
