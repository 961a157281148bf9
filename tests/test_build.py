"""Tests of ssl_lib.data.build: sources in their real layouts -> complete stores, or none."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dicom_files import write_ct as write_dicom
from ssl_lib.data.build import build_store
from ssl_lib.data.readers.medmnist import ORGANS_CLASS_NAMES
from ssl_lib.data.store import SliceStore, StoreError

# distinctive fake identifiers: none of them may reach any file of a store
SECRETS = {
    "PatientName": "Zyxwquux^Secretina",
    "PatientID": "PIDQ7731SECRET",
    "PatientBirthDate": "19230817",
    "StudyDate": "19991231",
    "AccessionNumber": "ACCN5551234",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.777111222333",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.444555666777",
}


def write_ct(path, stored, *, z=0.0, modality="CT", ids=None):
    """A CT slice whose identifying tags are exactly ``ids``."""
    write_dicom(path, stored, z=z, modality=modality, patient_id=None, **(ids or {"PatientID": "P"}))


def make_lidc(root, n_patients=4, n_slices=11, ids_of=lambda p: {"PatientID": f"LIDC-{p}"}):
    for p in range(n_patients):
        ids = ids_of(p)
        folder = root / "LIDC-IDRI" / ids.get("PatientID", f"P{p}") / "01-01-2000-study" / "3000-series"
        for k in range(n_slices):
            write_ct(folder / f"1-{k:03d}.dcm", np.full((8, 8), 1000 + 50 * k), z=k, ids=ids)
    return root / "LIDC-IDRI"


def make_covid(root, n=4):
    rng = np.random.default_rng(0)
    for folder, tag in (("CT_COVID", "COVID"), ("CT_NonCOVID", "NonCOVID")):
        (root / folder).mkdir(parents=True)
        (root / "Data-split" / tag).mkdir(parents=True)
        for i, split in enumerate(("train", "val", "test")):
            names = [f"case{i}_{j}%{j}.png" for j in range(n)]
            (root / "Data-split" / tag / f"{split}{folder}.txt").write_text("\n".join(names))
            for name in names:
                Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / folder / name)


def make_folder(root, n_patients=12, per_patient=3, labels=(0, 1), suffix=".png", ids_of=None):
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_patients):
        for s in range(per_patient):
            rel = f"pat{p:02d}/slice{s}{suffix}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".dcm":
                write_ct(root / rel, rng.integers(900, 1200, (8, 8)), ids=ids_of(p))
            else:
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / rel)
            rows.append((rel, labels[p % len(labels)], f"patient-{p}"))
    pd.DataFrame(rows, columns=["file", "label", "patient"]).to_csv(root / "labels.csv", index=False)
    return rows


def no_leftovers(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not list(parent.glob(f".{name}.tmp-*"))


# ---------------------------------------------------------------------------------------------
def test_build_lidc_store(tmp_path):
    src = make_lidc(tmp_path / "src")
    (src / "LIDC-0" / "01-01-2000-study" / "dx").mkdir()
    write_ct(src / "LIDC-0" / "01-01-2000-study" / "dx" / "1.dcm", np.zeros((8, 8)), modality="DX")
    store = build_store("lidc", src, tmp_path / "stores" / "lidc", size=16, salt="s")
    assert isinstance(store, SliceStore) and len(store) == 44 and store.images.shape == (44, 16, 16)
    assert store.meta["task"] == "unlabeled" and store.class_names == [] and store.meta["name"] == "lidc"
    assert (store.labels == -1).all() and store.meta["num_patients"] == 4
    reader = store.meta["reader"]
    assert reader["kind"] == "lidc" and reader["options"]["hu_range"] == [-1024.0, 3071.0]
    assert reader["counts"]["slices"] == 44 and reader["counts"]["skipped_series_small"] == 1
    # patient-level split by the store
    assert (store.manifest.groupby("patient")["split"].nunique() == 1).all()


def test_build_covid_store_keeps_given_splits(tmp_path):
    make_covid(tmp_path / "covid")
    store = build_store("covid", tmp_path / "covid", tmp_path / "stores" / "covid", size=8)
    assert store.meta["task"] == "binary" and store.class_names == ["NonCOVID", "COVID"]
    assert len(store) == 24 and {s: len(store.split_indices(s)) for s in ("train", "val", "test")} == \
        {"train": 8, "val": 8, "test": 8}
    covid = store.manifest["source"].str.startswith("CT_COVID/")
    assert (store.labels[covid.to_numpy()] == 1).all() and (store.labels[~covid.to_numpy()] == 0).all()
    assert store.meta["counts"]["train"] == {"NonCOVID": 4, "COVID": 4}


def test_build_medmnist_store_from_file_or_folder(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 22), ("val", 11), ("test", 11)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 11).reshape(n, 1)
    np.savez(tmp_path / "organsmnist.npz", **arrays)
    store = build_store("medmnist", tmp_path / "organsmnist.npz", tmp_path / "organs", size=28)
    assert store.meta["task"] == "multiclass" and store.class_names == ORGANS_CLASS_NAMES
    np.testing.assert_array_equal(store.images[22:33], arrays["val_images"])  # 28 px: stored as is
    assert list(store.split_indices("val")) == list(range(22, 33))
    # a folder holding organsmnist.npz works too (fetch_medmnist finds the file, no package needed)
    store = build_store("medmnist", tmp_path, tmp_path / "organs2", size=8, flag="organsmnist")
    assert len(store) == 44 and store.meta["reader"]["options"]["file"] == "organsmnist.npz"


def test_build_folder_store_patient_level_split_and_tasks(tmp_path):
    rows = make_folder(tmp_path / "src")
    store = build_store("folder", tmp_path / "src", tmp_path / "brain", size=8, split_seed=1,
                        class_names=["no hemorrhage", "hemorrhage"])
    assert store.meta["task"] == "binary" and store.class_names == ["no hemorrhage", "hemorrhage"]
    assert len(store) == len(rows) and set(store.manifest["split"]) == {"train", "val", "test"}
    assert (store.manifest.groupby("patient")["split"].nunique() == 1).all()  # no patient in two splits
    assert store.meta["reader"]["options"]["window"] == [35.0, 80.0]
    make_folder(tmp_path / "src3", labels=(0, 1, 2))
    store = build_store("folder", tmp_path / "src3", tmp_path / "three", size=8)
    assert store.meta["task"] == "multiclass" and store.class_names == ["0", "1", "2"]
    with pytest.raises(ValueError, match="2 class names given but the labels go up to 2"):
        build_store("folder", tmp_path / "src3", tmp_path / "x", size=8, class_names=["a", "b"])
    assert no_leftovers(tmp_path, "x")


def test_reader_error_midway_leaves_no_store_and_no_temp_folder(tmp_path):
    rows = make_folder(tmp_path / "src")
    (tmp_path / "src" / rows[20][0]).unlink()  # many slices are written before the error
    with pytest.raises(StoreError, match=r"slice2\.png: listed in labels\.csv but missing"):
        build_store("folder", tmp_path / "src", tmp_path / "out" / "brain", size=8)
    assert no_leftovers(tmp_path / "out", "brain")
    # with skip_bad: the store is written and the file is listed in skipped.csv
    store = build_store("folder", tmp_path / "src", tmp_path / "out" / "brain", size=8, skip_bad=True)
    assert len(store) == len(rows) - 1 and store.meta["skipped"] == 1
    skipped = pd.read_csv(store.path / "skipped.csv")
    assert list(skipped.columns) == ["file", "reason"] and skipped.at[0, "file"] == rows[20][0]
    assert store.meta["reader"]["counts"]["skipped_files"] == 1 and store.meta["reader"]["skip_bad"] is True


def test_build_rejects_unknown_kind_and_bad_options(tmp_path):
    with pytest.raises(ValueError, match="unknown source kind 'nifti'"):
        build_store("nifti", tmp_path, tmp_path / "s", size=8)
    make_covid(tmp_path / "covid", n=1)
    with pytest.raises(ValueError, match="invalid option for the 'covid' reader"):
        build_store("covid", tmp_path / "covid", tmp_path / "s", size=8, window=None)
    assert no_leftovers(tmp_path, "s")


def _all_bytes(folder: Path) -> bytes:
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"images.npy", "manifest.csv", "meta.json", "skipped.csv"}
    return b"\n".join(p.read_bytes() for p in files)


def _assert_no_identifier(blob: bytes, extra=()):
    for value in list(SECRETS.values()) + list(extra):
        for variant in {value, value.replace("^", " "), value.split("^")[0]}:
            assert variant.encode().lower() not in blob.lower(), f"{variant!r} leaked into the store"
    assert b"secret" not in blob.lower()


def test_no_dicom_identifier_reaches_any_store_file(tmp_path):
    # LIDC tree: folders named by PatientID (as TCIA does), one corrupt file so skipped.csv exists
    def ids_of(p):
        return {k: (v + str(p) if k in ("PatientID", "PatientName") else v) for k, v in SECRETS.items()}

    src = make_lidc(tmp_path / "src", n_patients=2, ids_of=ids_of)
    (src / "PIDQ7731SECRET0" / "01-01-2000-study" / "3000-series" / "1-050.dcm").write_bytes(b"junk" * 64)
    store = build_store("lidc", src, tmp_path / "lidc", size=8, skip_bad=True)
    assert len(store) == 22 and store.meta["skipped"] == 1
    _assert_no_identifier(_all_bytes(store.path), extra=["01-01-2000", "1-050", str(tmp_path)])
    # labelled folder of DICOMs without a patient column (the PatientID is used, hashed)
    rows = make_folder(tmp_path / "brain", n_patients=6, per_patient=2, suffix=".dcm", ids_of=ids_of)
    table = pd.DataFrame([(r[0], r[1]) for r in rows], columns=["file", "label"])
    table.loc[len(table)] = ("pat00/missing.dcm", 0)
    table.to_csv(tmp_path / "brain" / "labels.csv", index=False)
    store = build_store("folder", tmp_path / "brain", tmp_path / "brain_store", size=8, skip_bad=True)
    assert len(store) == 12 and store.meta["num_patients"] == 6 and store.meta["skipped"] == 1
    _assert_no_identifier(_all_bytes(store.path), extra=["pat00", str(tmp_path)])
    assert not any(str(tmp_path) in json.dumps(v) for v in store.meta.values())
