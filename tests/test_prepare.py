"""The pre-processing step on the synthetic data: four stores, reuse, no identifiers, pictures."""

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pydicom
import pytest

from ssl_lib.data import views
from ssl_lib.data.prepare import STORE_NAMES, prepare_stores
from ssl_lib.data.synthetic import sources_at
from ssl_lib.paths import StudyPaths


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    prepare_stores(out, "smoke", progress=False)
    return out


def test_four_stores_from_synthetic(out):
    stores = prepare_stores(out, "smoke", progress=False)
    assert list(stores) == list(STORE_NAMES)
    assert stores["lidc"].meta["task"] == "unlabeled" and stores["lidc"].image_size == 32
    assert stores["covid"].class_names == ["NonCOVID", "COVID"] and stores["covid"].masks is not None
    assert stores["organs"].num_classes == 11 and stores["brain"].num_classes == 2
    assert all(s.meta["synthetic"] for s in stores.values())
    for s in stores.values():  # splits by patient
        assert s.manifest.groupby("patient")["split"].nunique().max() == 1


def test_stores_are_reused_not_rebuilt(out):
    before = {n: (StudyPaths(out).store(n) / "images.npy").stat().st_mtime_ns for n in STORE_NAMES}
    prepare_stores(out, "smoke", progress=False)
    after = {n: (StudyPaths(out).store(n) / "images.npy").stat().st_mtime_ns for n in STORE_NAMES}
    assert before == after
    prepare_stores(out, "smoke", progress=False, rebuild=True)
    assert (StudyPaths(out).store("lidc") / "images.npy").stat().st_mtime_ns != before["lidc"]


def test_regenerated_synthetic_sources_rebuild_their_stores(tmp_path, monkeypatch):
    """A changed synthetic profile (here its difficulty) regenerates the sources; the stores built
    from them must follow (their signature names what generated the sources)."""
    from dataclasses import replace

    from ssl_lib import profiles

    first = prepare_stores(tmp_path, "smoke", progress=False)
    covid = np.asarray(first["covid"].images[:]).copy()
    easy = replace(profiles.synthetic_profile("smoke"), difficulty={"covid": 0.0, "organs": 0.5, "brain": 0.5})
    monkeypatch.setitem(profiles._SYNTHETIC, "smoke", easy)
    again = prepare_stores(tmp_path, "smoke", progress=False)
    assert again["covid"].meta["signature"]["synthetic"]["difficulty"]["covid"] == 0.0
    assert not np.array_equal(np.asarray(again["covid"].images[:]), covid)


def test_no_dicom_identifier_in_any_store_file(out):
    src = sources_at(StudyPaths(out).synthetic)
    secrets = set()
    for f in list(src.lidc.rglob("*.dcm"))[:40] + list(src.brain.rglob("*.dcm"))[:20]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for tag in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SeriesInstanceUID",
                    "SOPInstanceUID", "AccessionNumber"):
            value = str(getattr(ds, tag, "") or "")
            if len(value) >= 6:
                secrets.add(value.encode())
    assert len(secrets) > 10
    for f in StudyPaths(out).root.joinpath("stores").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            leaked = [s for s in secrets if s in data]
            assert not leaked, f"{f} contains {leaked[:3]}"


def test_views(out, monkeypatch):
    stores = prepare_stores(out, "smoke", progress=False)
    summary = views.store_summary(stores)
    assert list(summary.index) == list(STORE_NAMES) and (summary["data"] == "synthetic").all()
    counts = views.class_counts(stores)
    assert counts.loc["organs"].shape[0] == 11 and list(counts.columns) == ["train", "val", "test"]
    assert counts.to_numpy().sum() == sum(len(s) for n, s in stores.items() if n != "lidc")
    assert isinstance(views.show_examples(stores, n=3), matplotlib.figure.Figure)
    hu = views.series_hu(sources_at(StudyPaths(out).synthetic).lidc)
    assert hu.ndim == 3 and hu.min() < -900 and hu.max() > 300  # air and bone in HU
    assert isinstance(views.hu_histogram_of("", out), matplotlib.figure.Figure)
    assert views.slice_browser(stores["covid"]).children  # a live widget
    monkeypatch.setenv("SSL_CT_BATCH", "1")  # the study runner's kernels: pre-rendered frames for the book
    page = views.slice_browser(stores["covid"], max_frames=5).data
    assert "sslct-viewer" in page and page.count("<img data-key=") == min(5, len(stores["covid"]))


def test_user_source_replaces_synthetic(out, tmp_path):
    """A given source is read instead of the synthetic one (here: an npz written in MedMNIST's keys)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 22), ("val", 11), ("test", 11)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 11).reshape(-1, 1)
    np.savez(tmp_path / "organsmnist.npz", **arrays)
    stores = prepare_stores(out, "smoke", organs_npz=str(tmp_path / "organsmnist.npz"), progress=False)
    assert len(stores["organs"]) == 44 and stores["organs"].meta["synthetic"] is False
    assert stores["covid"].meta["synthetic"] is True
