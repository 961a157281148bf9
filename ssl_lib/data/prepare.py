"""The pre-processing step: every source -> its slice store, synthetic where no data is given.

:func:`prepare_stores` is what ``notebooks/01_preprocess.ipynb`` calls. For each of the study's
four stores it takes the user's source when one is given (LIDC-IDRI tree, COVID-CT repository,
OrganSMNIST ``.npz``, folder of DICOM/PNG slices with a labels CSV) and the built-in synthetic
counterpart otherwise, and builds the store once: an existing complete store with the same
settings is reused.

Whether a store is current is decided by its ``meta["signature"]``: the size, the reader options
and a *fingerprint* of the source, a salted hash of its absolute path (the salt lives in
``<output>/stores/.fingerprint-salt``), so no source path is ever written to an output.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import replace
from pathlib import Path

from ..paths import StudyPaths
from ..profiles import DataProfile, data_profile
from .build import build_store
from .intensity import BRAIN_WINDOW
from .store import SliceStore

#: Store names of the study, in order.
STORE_NAMES = ("lidc", "covid", "organs", "brain")


def source_fingerprint(source: str | os.PathLike, output_dir: str | os.PathLike) -> str:
    """Salted SHA-256 (16 hex digits) of a source's absolute path: detects a changed source, reveals no path."""
    salt_file = StudyPaths(output_dir).root / "stores" / ".fingerprint-salt"
    if not salt_file.is_file():
        salt_file.parent.mkdir(parents=True, exist_ok=True)
        salt_file.write_text(secrets.token_hex(16))
    salt = salt_file.read_text().strip()
    return hashlib.sha256(f"{salt}\x00{Path(source).resolve()}".encode("utf-8")).hexdigest()[:16]


def generated_by(synthetic) -> dict:
    """What made the synthetic sources (generator version, profile, seed, difficulty: their marker's
    key), part of a synthetic store's signature so that regenerated sources rebuild the store."""
    from .synthetic import MARKER

    marker = json.loads((synthetic.root / MARKER).read_text())
    return {k: marker[k] for k in ("generator", "profile", "seed", "difficulty")}


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
    covid_patient: str = "prefix",
    covid_strict: bool = False,
    png16: str | None = None,
    workers: int | str = "auto",
    tasks=None,
) -> dict[str, SliceStore]:
    """Build (or reuse) the four stores under ``StudyPaths(output_dir).store(name)``.

    Any source left empty is replaced by the synthetic data set (written once under
    ``output_dir/synthetic``). ``image_size`` overrides the profile's task image size.
    ``covid_patient``: COVID-CT patient rule (``"prefix"``, ``"name"``); ``covid_strict``: refuse
    patient keys that cross the official split instead of keeping it (see
    :mod:`ssl_lib.data.readers.covidct`). ``png16``: mapping of 16-bit grey PNGs
    (``"bits:N"`` or ``"hu:OFFSET"``; none: such images are an error). ``workers``: processes
    decoding the LIDC-IDRI DICOM (``"auto"``: one per core for large trees). ``tasks``: the
    study's labelled tasks (:func:`ssl_lib.tasks.parse_tasks`; default the paper's three): a store
    per task, the task list written to ``<output>/tasks.json``. Returns ``{"lidc", <task>...}``.
    """
    from ..tasks import TASKS, register, save_study_tasks, parse_tasks

    specs = parse_tasks(tasks)
    given = {s.name: s.source for s in specs if s.name in TASKS and s.source}
    covid_root = given.get("covid", covid_root)
    brain_root = given.get("brain", brain_root)
    organs_npz = given.get("organs", organs_npz)
    paths = StudyPaths(output_dir)
    prof = data_profile(profile)
    task_size = image_size or prof.task_size
    synthetic = None
    wanted = {"covid": covid_root, "organs": organs_npz, "brain": brain_root}
    if not lidc_root or any(not src for name, src in wanted.items() if any(s.name == name for s in specs)):
        from .synthetic import make_synthetic

        synthetic = make_synthetic(paths.synthetic, profile=prof.synthetic, seed=seed, progress=progress)
    if brain_root and not brain_labels:
        brain_labels = str(Path(brain_root) / "labels.csv")

    paper_plans = {
        "covid": dict(kind="covid", source=covid_root or synthetic.covid, size=task_size,
                      masks_root=None if covid_root else synthetic.covid_masks, patient=covid_patient,
                      conflicts="error" if covid_strict else "keep", png16=png16),
        "organs": dict(kind="medmnist", source=organs_npz or synthetic.organs_npz, size=task_size),
        "brain": dict(kind="folder", source=brain_root or synthetic.brain, size=task_size,
                      labels_csv=brain_labels or synthetic.brain_labels,
                      masks_root=None if brain_root else synthetic.brain_masks,
                      window=BRAIN_WINDOW, class_names=["no hemorrhage", "hemorrhage"], png16=png16),
    } if synthetic is not None else {}
    plans = {"lidc": dict(kind="lidc", source=lidc_root or synthetic.lidc, size=prof.lidc_size, workers=workers)}
    for spec in specs:
        if spec.name in TASKS:
            plans[spec.name] = paper_plans[spec.name] if spec.name in paper_plans else _paper_plan(
                spec.name, covid_root, organs_npz, brain_root, brain_labels, task_size, covid_patient, covid_strict, png16)
        else:
            options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.options.items()}
            if spec.reader == "folder":
                options.setdefault("window", None)  # a user's folder: the interval mapping unless a window is given
            plans[spec.name] = dict(kind=spec.reader, source=spec.source, size=task_size,
                                    class_names=list(spec.class_names) or None, **options)
    stores = {}
    for name, plan in plans.items():
        out = paths.store(name)
        synthetic_source = plan["source"] is not None and synthetic is not None and str(plan["source"]).startswith(str(synthetic.root))
        options = {k: v for k, v in plan.items() if k not in ("kind", "source", "size", "workers") and v is not None}
        signature = {"source": source_fingerprint(plan["source"], output_dir), "size": plan["size"],
                     "synthetic": synthetic_source and generated_by(synthetic),
                     "options": {k: (source_fingerprint(v, output_dir) if k.endswith(("_root", "_csv")) else v)
                                 for k, v in sorted(options.items())}}
        signature = json.loads(json.dumps(signature))  # as meta.json keeps it (tuples become lists)
        meta_file = out / "meta.json"
        if not rebuild and meta_file.exists() and json.loads(meta_file.read_text()).get("signature") == signature:
            stores[name] = SliceStore(out)
            continue
        if "workers" in plan:
            options["workers"] = plan["workers"]
        stores[name] = build_store(plan["kind"], plan["source"], out, size=plan["size"], skip_bad=skip_bad,
                                   split_seed=seed, progress=progress, overwrite=True,
                                   extra_meta={"synthetic": synthetic_source, "signature": signature}, **options)
    resolved = []
    for spec in specs:  # user tasks take their kind and class names from their store
        if spec.name not in TASKS:
            meta = stores[spec.name].meta
            spec = register(replace(spec, kind=meta["task"], class_names=tuple(meta["class_names"]),
                                    positive_class=spec.positive_class if meta["task"] == "binary" else None))
        resolved.append(spec)
    save_study_tasks(output_dir, resolved)
    return stores


def _paper_plan(name, covid_root, organs_npz, brain_root, brain_labels, task_size, covid_patient, covid_strict,
                png16) -> dict:
    """The store plan of a paper task whose source the user gave (no synthetic data needed)."""
    if name == "covid":
        return dict(kind="covid", source=covid_root, size=task_size, patient=covid_patient,
                    conflicts="error" if covid_strict else "keep", png16=png16)
    if name == "organs":
        return dict(kind="medmnist", source=organs_npz, size=task_size)
    return dict(kind="folder", source=brain_root, size=task_size, labels_csv=brain_labels, window=BRAIN_WINDOW,
                class_names=["no hemorrhage", "hemorrhage"], png16=png16)
