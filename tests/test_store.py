import json

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_lib.data.store import (
    SliceRecord, SliceStore, StoreError, export_png, make_loader, normalize_batch, patient_split, write_store,
)


def _records(n_patients=12, per_patient=3, size=20, split=""):
    rng = np.random.default_rng(0)
    for p in range(n_patients):
        for s in range(per_patient):
            px = rng.integers(0, 256, (size, size + 4), dtype=np.uint8)
            yield SliceRecord(px, patient=f"PATIENT-{p:03d}", label=p % 2, split=split, source=f"p{p}_{s}.png")


def test_write_and_read_back(tmp_path):
    recs = list(_records())
    store = write_store(recs, tmp_path / "s", size=16, name="demo", task="binary", class_names=["no", "yes"], salt="x")
    assert isinstance(store, SliceStore) and len(store) == 36
    assert store.images.shape == (36, 16, 16) and store.images.dtype == np.uint8
    assert isinstance(store.images, np.memmap)
    # the npy file is a valid standard .npy
    assert np.load(tmp_path / "s" / "images.npy").shape == (36, 16, 16)
    # mean/std are those of the stored pixels / 255
    pix = np.asarray(store.images, dtype=np.float64) / 255
    assert store.mean == pytest.approx(pix.mean(), rel=1e-6) and store.std == pytest.approx(pix.std(), rel=1e-6)
    assert set(store.manifest.columns) == {"index", "patient", "label", "split", "source"}
    assert store.num_classes == 2 and store.meta["num_patients"] == 12
    # resize is applied once at write time (bilinear, antialiased), labels preserved in order
    np.testing.assert_array_equal(store.labels, [r.label for r in recs])


def test_patient_keys_are_hashed_and_salted(tmp_path):
    s1 = write_store(_records(), tmp_path / "a", size=8, name="a", salt="one")
    s2 = write_store(_records(), tmp_path / "b", size=8, name="b", salt="two")
    for store in (s1, s2):
        for f in store.path.iterdir():
            assert b"PATIENT-" not in f.read_bytes(), f
    assert set(s1.patients).isdisjoint(set(s2.patients))
    assert s1.manifest.groupby("patient").size().eq(3).all()


def test_splits_are_by_patient_and_stratified(tmp_path):
    store = write_store(_records(n_patients=40), tmp_path / "s", size=8, name="s", salt="x",
                        split_fractions=(0.5, 0.25, 0.25))
    per_patient = store.manifest.groupby("patient")["split"].nunique()
    assert per_patient.max() == 1
    counts = store.manifest.drop_duplicates("patient").groupby(["split", "label"]).size()
    assert counts.loc["train"].tolist() == [10, 10]
    assert counts.loc["val"].tolist() == [5, 5] and counts.loc["test"].tolist() == [5, 5]


def test_patient_split_is_deterministic_and_seeded():
    patients = [f"p{i}" for i in range(30)]
    labels = [i % 3 for i in range(30)]
    a, b = patient_split(patients, labels, seed=1), patient_split(patients, labels, seed=1)
    assert a == b
    assert a != patient_split(patients, labels, seed=2)


def test_given_splits_kept_and_crossing_patient_rejected(tmp_path):
    store = write_store(_records(split="test"), tmp_path / "s", size=8, name="s")
    assert set(store.manifest["split"]) == {"test"}
    bad = [SliceRecord(np.zeros((4, 4), np.uint8), "P1", 0, "train", "a"),
           SliceRecord(np.zeros((4, 4), np.uint8), "P1", 0, "test", "b")]
    with pytest.raises(StoreError, match="more than one"):
        write_store(bad, tmp_path / "bad", size=4, name="bad")
    assert not (tmp_path / "bad").exists()


def test_failed_write_leaves_nothing(tmp_path):
    def broken():
        yield from _records(n_patients=2)
        raise StoreError("corrupt.dcm: not a DICOM file")

    with pytest.raises(StoreError, match="corrupt.dcm"):
        write_store(broken(), tmp_path / "s", size=8, name="s")
    assert list(tmp_path.iterdir()) == []


def test_empty_source_and_existing_store(tmp_path):
    with pytest.raises(StoreError, match="no slices"):
        write_store(iter([]), tmp_path / "s", size=8, name="s")
    write_store(_records(n_patients=2), tmp_path / "t", size=8, name="t")
    with pytest.raises(StoreError, match="already exists"):
        write_store(_records(n_patients=2), tmp_path / "t", size=8, name="t")
    assert len(write_store(_records(n_patients=3), tmp_path / "t", size=8, name="t", overwrite=True)) == 9
    with pytest.raises(StoreError, match="not a slice store"):
        SliceStore(tmp_path / "nothing")


def test_masks_written_with_nearest_resize(tmp_path):
    recs = []
    for i in range(4):
        m = np.zeros((20, 20), np.uint8)
        m[5:15, 5:15] = 255
        recs.append(SliceRecord(np.full((20, 20), 9, np.uint8), f"p{i}", 1, "", str(i), mask=m if i else None))
    store = write_store(recs, tmp_path / "s", size=10, name="s")
    assert store.masks.shape == (4, 10, 10)
    assert store.masks[0].sum() == 0
    assert set(np.unique(store.masks[1])) == {0, 1} and store.masks[1].sum() == 25


def test_loader_yields_whole_batches_in_order(tmp_path):
    store = write_store(_records(), tmp_path / "s", size=8, name="s")
    idx = store.split_indices("train")
    ds = store.dataset(idx)
    batches = list(make_loader(ds, batch_size=5))
    images, labels = batches[0]
    assert images.shape == (5, 1, 8, 8) and images.dtype == torch.uint8
    all_images = torch.cat([b[0] for b in batches])
    np.testing.assert_array_equal(all_images[:, 0].numpy(), np.asarray(store.images)[idx])
    np.testing.assert_array_equal(torch.cat([b[1] for b in batches]).numpy(), store.labels[idx])
    # shuffled, unsorted indices come back in the requested order
    perm = np.random.default_rng(0).permutation(len(store))
    np.testing.assert_array_equal(store.read(perm), np.asarray(store.images)[perm])


def test_normalize_batch():
    x = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)
    y = normalize_batch(x, mean=0.5, std=0.25)
    assert y.shape == (2, 3, 4, 4) and torch.allclose(y, torch.full_like(y, 2.0))


def test_export_png(tmp_path):
    from PIL import Image

    store = write_store(_records(n_patients=2), tmp_path / "s", size=8, name="s")
    folder = export_png(store, tmp_path / "png")
    files = sorted(folder.iterdir())
    assert len(files) == 6
    key, idx = files[0].stem.rsplit("_", 1)
    np.testing.assert_array_equal(np.asarray(Image.open(files[0])), store.images[int(idx)])


def test_extra_meta_is_written_with_the_store(tmp_path):
    store = write_store(_records(n_patients=2), tmp_path / "s", size=8, name="s", extra_meta={"synthetic": True})
    assert store.meta["synthetic"] is True
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["synthetic"] is True
