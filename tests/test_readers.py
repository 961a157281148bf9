"""Tests of ssl_lib.data.readers: every source layout written small, in its real form."""

import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from dicom_files import write_ct
from ssl_lib.data.intensity import interval_map, window
from ssl_lib.data.readers import CovidCTReader, FolderReader, LidcReader, MedMNISTReader, fetch_medmnist
from ssl_lib.data.readers.dicom import decode_hu, hu_to_uint8, read_dicom, sort_slices
from ssl_lib.data.readers.medmnist import ORGANS_CLASS_NAMES
from ssl_lib.data.store import StoreError


# ---------------------------------------------------------------------------------------------
# fixtures in the real layouts
def write_series(folder, n, *, shuffle_seed=0, hw=(8, 8), **kw):
    """``n`` slices at z = 0, 2.5, 5, ...; slice k has HU 100*k everywhere; file names shuffled vs z."""
    rng = np.random.default_rng(shuffle_seed)
    names = rng.permutation(n)
    for k in range(n):
        write_ct(Path(folder) / f"1-{names[k]:03d}.dcm", np.full(hw, 1024 + 100 * k), z=2.5 * k,
                 instance=k + 1, **kw)


def lidc_value(k):
    """uint8 value of a slice with HU 100*k after the paper's interval mapping."""
    return int(interval_map(np.array([100.0 * k]))[0])


# ---------------------------------------------------------------------------------------------
# DICOM decoding and intensity mapping
def test_hu_of_pydicom_ct_slice_matches_pydicom():
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut, apply_rescale

    path = get_testdata_file("CT_small.dcm")
    ds = read_dicom(path)
    hu = decode_hu(ds, path)
    arr = ds.pixel_array
    assert arr.shape == (128, 128) and arr.dtype == np.int16 and float(ds.RescaleIntercept) == -1024
    expected = arr.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(hu, expected)
    np.testing.assert_array_equal(hu, apply_rescale(arr, ds))
    np.testing.assert_array_equal(hu, apply_modality_lut(arr, ds))
    assert hu.dtype == np.float32 and hu.min() < 0  # really in HU, not stored values


def test_interval_mapping_and_window_values_at_ends_and_middle():
    hu = np.array([-2000.0, -1024.0, (3071.0 - 1024.0) / 2, 3071.0, 5000.0])
    np.testing.assert_array_equal(hu_to_uint8(hu), [0, 0, 128, 255, 255])
    hu = np.array([-100.0, -5.0, 35.0, 75.0, 500.0])  # brain window 35/80 -> [-5, 75]
    np.testing.assert_array_equal(hu_to_uint8(hu, window=(35, 80)), [0, 0, 128, 255, 255])
    np.testing.assert_array_equal(hu_to_uint8(hu, window=(35, 80)), window(hu, 35, 80))
    # a quarter of the interval
    assert hu_to_uint8(np.array([-1024.0 + 4095.0 / 4]))[0] == round(255 / 4)


def test_sort_slices_by_position_then_instance_number():
    def ds(z=None, n=None):
        d = Dataset()
        if z is not None:
            d.ImagePositionPatient = [0, 0, z]
        if n is not None:
            d.InstanceNumber = n
        return d

    items = [("a", ds(5.0, 1)), ("b", ds(-3.0, 2)), ("c", ds(1.0, 3))]
    assert [k for k, _ in sort_slices(items)] == ["b", "c", "a"]
    items = [("a", ds(None, 3)), ("b", ds(1.0, 1)), ("c", ds(None, 2))]  # a position missing -> numbers
    assert [k for k, _ in sort_slices(items)] == ["b", "c", "a"]


# ---------------------------------------------------------------------------------------------
# LIDC-IDRI
def test_lidc_reads_sorted_hu_mapped_series(tmp_path):
    root = tmp_path / "LIDC-IDRI"
    series = root / "LIDC-IDRI-0001" / "01-01-2000-30178" / "3000566-03192"
    write_series(series, 12, shuffle_seed=1)
    (series / "069.xml").write_text("<LidcReadMessage/>")  # the reads beside the slices are ignored
    reader = LidcReader(tmp_path)  # the parent of LIDC-IDRI works too
    recs = list(reader)
    assert len(recs) == 12 and reader.counts["slices"] == 12 and reader.counts["series_read"] == 1
    # ordered by position, whatever the file names; HU 100*k mapped with -1024..3071 -> 0..255
    assert [int(r.pixels[0, 0]) for r in recs] == [lidc_value(k) for k in range(12)]
    assert all(r.pixels.dtype == np.uint8 and r.pixels.shape == (8, 8) for r in recs)
    assert {r.patient for r in recs} == {"LIDC-0001"} and all(r.label == -1 and r.split == "" for r in recs)
    # source: a hashed series key + slice number, nothing from the tree or the headers
    assert len({r.source for r in recs}) == 12
    assert all("LIDC" not in r.source and "3000566" not in r.source and ".dcm" not in r.source for r in recs)


def test_lidc_sorts_by_instance_number_without_positions(tmp_path):
    folder = tmp_path / "LIDC-IDRI" / "P2" / "st" / "se"
    order = np.random.default_rng(3).permutation(11)
    for k in range(11):
        write_ct(folder / f"{order[k]:02d}.dcm", np.full((4, 4), 1024 + 100 * k), instance=k + 1, position=False)
    recs = list(LidcReader(tmp_path / "LIDC-IDRI"))
    assert [int(r.pixels[0, 0]) for r in recs] == [lidc_value(k) for k in range(11)]


def test_lidc_skips_and_counts_tiny_and_non_ct_series(tmp_path):
    root = tmp_path / "LIDC-IDRI"
    write_series(root / "A" / "s1" / "ct", 11, patient_id=None)  # no PatientID -> folder name
    write_series(root / "A" / "s2" / "radiographs", 2, modality="DX")  # tiny (LIDC's radiographs)
    write_series(root / "A" / "s3" / "tiny-ct", 10)  # <= 10 images, even if CT
    write_series(root / "B" / "s1" / "mr", 12, modality="MR", patient_id="B-ID")  # not CT
    reader = LidcReader(root)
    recs = list(reader)
    assert len(recs) == 11 and {r.patient for r in recs} == {"A"}
    c = reader.counts
    assert (c["series"], c["series_read"], c["skipped_series_small"], c["skipped_series_non_ct"]) == (4, 1, 2, 1)
    assert c["patients"] == 2 and len(reader.skipped) == 0
    assert list(LidcReader(root, min_series_images=1)) and LidcReader(root, min_series_images=1).options[
        "min_series_images"] == 1


def test_lidc_rescale_slope_is_applied(tmp_path):
    folder = tmp_path / "LIDC-IDRI" / "P" / "st" / "se"
    for k in range(11):
        write_ct(folder / f"{k}.dcm", np.full((4, 4), 512 + 50 * k), z=k, slope=2.0, intercept=-1024.0)
    recs = list(LidcReader(tmp_path))
    assert [int(r.pixels[0, 0]) for r in recs] == [lidc_value(k) for k in range(11)]


def _corrupt_series(root, n=12):
    folder = root / "P" / "st" / "se"
    write_series(folder, n)
    (folder / "1-099.dcm").write_bytes(b"this is not a DICOM file at all" * 10)
    return folder


def test_lidc_corrupt_file_is_one_clear_error_or_skipped(tmp_path):
    root = tmp_path / "LIDC-IDRI"
    _corrupt_series(root)
    with pytest.raises(StoreError, match=r"1-099\.dcm: not a DICOM file") as info:
        list(LidcReader(root))
    assert info.value.__cause__ is not None  # pydicom's error chained
    reader = LidcReader(root, skip_bad=True, salt="s")
    recs = list(reader)
    assert len(recs) == 12 and reader.counts["skipped_files"] == 1
    (path, reason), = reader.skipped.rows
    assert reason == "not a DICOM file" and "P" not in path.split("/")[0] and "1-099" not in path


def test_lidc_truncated_pixel_data_is_an_error(tmp_path):
    folder = tmp_path / "LIDC-IDRI" / "P" / "st" / "se"
    write_series(folder, 11)
    victim = sorted(folder.glob("*.dcm"))[0]
    victim.write_bytes(victim.read_bytes()[:-40])
    with pytest.raises(StoreError, match=victim.name):
        list(LidcReader(tmp_path))


def test_lidc_missing_rescale_tags_is_an_error(tmp_path):
    folder = tmp_path / "LIDC-IDRI" / "P" / "st" / "se"
    for k in range(11):
        write_ct(folder / f"{k:02d}.dcm", np.zeros((4, 4)), z=k, rescale=k != 4)
    with pytest.raises(StoreError, match=r"04\.dcm: missing RescaleSlope and RescaleIntercept"):
        list(LidcReader(tmp_path))
    reader = LidcReader(tmp_path, skip_bad=True)
    assert len(list(reader)) == 10 and "Rescale" in reader.skipped.rows[0][1]


def test_lidc_empty_or_missing_root(tmp_path):
    (tmp_path / "LIDC-IDRI").mkdir()
    with pytest.raises(StoreError, match="no DICOM series"):
        list(LidcReader(tmp_path / "LIDC-IDRI"))
    with pytest.raises(StoreError, match="not found"):
        LidcReader(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# COVID-CT
def make_covid(root, *, with_masks=False):
    """COVID-CT layout: % and spaces in names, PNG + JPG, grey/RGB/RGBA; one image in no split file."""
    rng = np.random.default_rng(0)
    files = {
        "CT_COVID": {"train": ["2020.02.10-p6-52%0.png", "2020.02.10-p6-52%1.png", "covid case 3.jpg"],
                     "val": ["xyz%0.png"], "test": ["rgba%0.png"]},
        "CT_NonCOVID": {"train": ["0.jpg", "1%0.png", "1%1.png"], "val": ["10.png"], "test": ["7 b.png"]},
    }
    for folder, splits in files.items():
        (root / folder).mkdir(parents=True)
        split_folder = root / "Data-split" / folder.replace("CT_", "")
        split_folder.mkdir(parents=True)
        for split, names in splits.items():
            (split_folder / f"{split}{folder}.txt").write_text("".join(n + "\n" for n in names) + "\n")
            for name in names:
                if name.startswith("rgba"):
                    img = Image.fromarray(rng.integers(0, 256, (12, 10, 4), dtype=np.uint8), "RGBA")
                elif name.endswith(".jpg") or name.startswith("2020"):
                    img = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), "RGB")
                else:
                    img = Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8), "L")
                img.save(root / folder / name)
                if with_masks and name.endswith(".png"):
                    m = np.zeros((12, 10), np.uint8)
                    m[2:5, 3:6] = 255
                    (root / "masks" / folder).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(m).save(root / "masks" / folder / (Path(name).stem + ".png"))
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(root / "CT_COVID" / "unlisted%0.png")
    return files


def test_covid_reader_labels_splits_patients(tmp_path):
    files = make_covid(tmp_path)
    reader = CovidCTReader(tmp_path)
    recs = list(reader)
    assert len(recs) == 10 and reader.counts["unlisted_images"] == 1
    by_source = {r.source: r for r in recs}
    for folder, splits in files.items():
        for split, names in splits.items():
            for name in names:
                r = by_source[f"{folder}/{name}"]
                assert r.split == split and r.label == (1 if folder == "CT_COVID" else 0)
                assert r.pixels.dtype == np.uint8 and r.pixels.shape == (12, 10) and r.mask is None
    assert by_source["CT_COVID/2020.02.10-p6-52%0.png"].patient == by_source["CT_COVID/2020.02.10-p6-52%1.png"].patient
    assert by_source["CT_COVID/2020.02.10-p6-52%0.png"].patient == "CT_COVID/2020.02.10-p6-52"
    assert by_source["CT_NonCOVID/0.jpg"].patient == "CT_NonCOVID/0"  # no '%': the stem
    # RGB -> grey with ITU-R 601 luma, like PIL's convert("L") (up to rounding)
    rgb = np.asarray(Image.open(tmp_path / "CT_COVID" / "2020.02.10-p6-52%0.png"))
    ref = np.asarray(Image.open(tmp_path / "CT_COVID" / "2020.02.10-p6-52%0.png").convert("L")).astype(int)
    assert rgb.ndim == 3 and np.abs(by_source["CT_COVID/2020.02.10-p6-52%0.png"].pixels.astype(int) - ref).max() <= 1
    # a callable patient key: one key in all three given splits -> one key per split (official split kept)
    reader = CovidCTReader(tmp_path, patient_of=lambda name: "same")
    recs = list(reader)
    assert {r.patient for r in recs} == {"same@train", "same@val", "same@test"}
    assert reader.counts["patient_conflicts"] == 1 and reader.counts["conflicting_files"] == 10


def test_covid_masks(tmp_path):
    make_covid(tmp_path, with_masks=True)
    reader = CovidCTReader(tmp_path, masks_root=tmp_path / "masks")
    recs = {r.source: r for r in reader}
    m = recs["CT_COVID/xyz%0.png"].mask
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1} and m[3, 4] == 1 and m.sum() == 9
    assert recs["CT_NonCOVID/0.jpg"].mask is None and reader.counts["images_without_mask"] == 2  # the two JPGs


def test_covid_missing_image_names_split_file(tmp_path):
    make_covid(tmp_path)
    (tmp_path / "CT_NonCOVID" / "10.png").unlink()
    with pytest.raises(StoreError, match=r"10\.png: listed in split file Data-split/NonCOVID/valCT_NonCOVID\.txt .*\(split file: .*valCT_NonCOVID\.txt\)"):
        list(CovidCTReader(tmp_path))
    reader = CovidCTReader(tmp_path, skip_bad=True)
    assert len(list(reader)) == 9
    assert reader.skipped.rows == [("CT_NonCOVID/10.png", reader.skipped.rows[0][1])]
    assert "valCT_NonCOVID.txt" in reader.skipped.rows[0][1]


def test_covid_corrupt_image_and_missing_split_file(tmp_path):
    make_covid(tmp_path)
    (tmp_path / "CT_COVID" / "xyz%0.png").write_bytes(b"garbage")
    with pytest.raises(StoreError, match=r"xyz%0\.png: not a readable image") as info:
        list(CovidCTReader(tmp_path))
    assert info.value.__cause__ is not None
    (tmp_path / "Data-split" / "COVID" / "testCT_COVID.txt").unlink()
    with pytest.raises(StoreError, match=r"testCT_COVID\.txt: split file missing"):
        CovidCTReader(tmp_path)
    with pytest.raises(StoreError, match="image folder missing"):
        CovidCTReader(tmp_path / "Data-split")


def test_covid_image_in_two_split_files_is_an_error(tmp_path):
    make_covid(tmp_path)
    with open(tmp_path / "Data-split" / "COVID" / "testCT_COVID.txt", "a") as fh:
        fh.write("xyz%0.png\n")
    with pytest.raises(StoreError, match="listed in two split files"):
        list(CovidCTReader(tmp_path))


# ---------------------------------------------------------------------------------------------
# MedMNIST
def make_npz(path, *, masks=False, n=(6, 2, 3), classes=11, **drop):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % classes).reshape(k, 1).astype(np.uint8)
        if masks:
            arrays[f"{split}_masks"] = (arrays[f"{split}_images"] > 128).astype(np.uint8)
    for key in drop:
        arrays.pop(key)
    np.savez(path, **arrays)
    return arrays


def test_medmnist_reader_keeps_splits(tmp_path):
    arrays = make_npz(tmp_path / "organsmnist.npz")
    reader = MedMNISTReader(tmp_path / "organsmnist.npz")
    recs = list(reader)
    assert len(recs) == 11 and reader.num_classes == 6  # labels 0..5 in this tiny file
    assert [r.split for r in recs] == ["train"] * 6 + ["val"] * 2 + ["test"] * 3
    np.testing.assert_array_equal(recs[7].pixels, arrays["val_images"][1])
    assert recs[7].label == int(arrays["val_labels"][1, 0]) and recs[7].patient == "val:1"
    assert recs[7].source == "organsmnist.npz:val:1" and recs[7].mask is None
    assert len({r.patient for r in recs}) == 11 and len(ORGANS_CLASS_NAMES) == 11


def test_medmnist_masks(tmp_path):
    arrays = make_npz(tmp_path / "m.npz", masks=True)
    recs = list(MedMNISTReader(tmp_path / "m.npz"))
    np.testing.assert_array_equal(recs[0].mask, arrays["train_masks"][0] > 0)
    assert all(r.mask is None for r in MedMNISTReader(tmp_path / "m.npz", masks=False))


def test_medmnist_wrong_keys_name_file_and_keys(tmp_path):
    make_npz(tmp_path / "bad.npz", val_labels=True)
    with pytest.raises(StoreError, match=r"bad\.npz: .*missing keys \['val_labels'\]; keys found: \['test_images'"):
        MedMNISTReader(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(StoreError, match=r"junk\.npz: not a readable \.npz") as info:
        MedMNISTReader(tmp_path / "junk.npz")
    assert info.value.__cause__ is not None
    with pytest.raises(StoreError, match="not found"):
        MedMNISTReader(tmp_path / "absent.npz")


def test_fetch_medmnist_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    class OfflineDataset:
        def __init__(self, **kwargs):
            assert kwargs["root"] == str(tmp_path) and kwargs["download"]
            raise RuntimeError("Something went wrong when downloading! Go to the homepage to download manually.")

    fake = types.ModuleType("medmnist")
    fake.INFO = {"organsmnist": {"python_class": "OrganSMNIST"}}
    fake.OrganSMNIST = OfflineDataset
    monkeypatch.setitem(sys.modules, "medmnist", fake)
    with pytest.raises(StoreError, match=r"put organsmnist\.npz at .*organsmnist\.npz") as info:
        fetch_medmnist("organsmnist", root=tmp_path)
    assert str(tmp_path.resolve() / "organsmnist.npz") in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    monkeypatch.setitem(sys.modules, "medmnist", None)  # not installed
    with pytest.raises(StoreError, match=r"not installed; put organsmnist\.npz at"):
        fetch_medmnist("organsmnist", root=tmp_path)
    make_npz(tmp_path / "organsmnist.npz")  # present: no package needed
    assert fetch_medmnist("organsmnist", root=tmp_path) == tmp_path / "organsmnist.npz"


# ---------------------------------------------------------------------------------------------
# labelled folder (DICOM or PNG + labels.csv)
def make_folder(root, rows, *, dicom_hu=None):
    """``rows``: (file, label, patient or None, split or None); .dcm files get HU ``dicom_hu`` slices."""
    rng = np.random.default_rng(0)
    for file, *_ in rows:
        path = root / file
        path.parent.mkdir(parents=True, exist_ok=True)
        if file.endswith(".dcm"):
            hu = np.zeros((6, 6)) if dicom_hu is None else dicom_hu
            write_ct(path, np.asarray(hu) + 1024, patient_id=f"ID-{Path(file).parent.name}")
        else:
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(path)
    table = pd.DataFrame(rows, columns=["file", "label", "patient", "split"])
    for col in ("patient", "split"):
        if table[col].isna().all():
            table = table.drop(columns=col)
    table.to_csv(root / "labels.csv", index=False)


def test_folder_dicom_window_and_interval_mapping(tmp_path):
    hu = np.array([[-5.0, 35.0, 75.0], [-1024.0, 3071.0, 0.0]])
    make_folder(tmp_path, [("pat1/a.dcm", 1, None, None)], dicom_hu=hu)
    rec, = FolderReader(tmp_path)  # default: the brain window 35/80
    np.testing.assert_array_equal(rec.pixels, [[0, 128, 255], [0, 255, 16]])  # 0 HU: 5 * 255 / 80
    assert rec.patient == "ID-pat1" and rec.label == 1 and rec.source.startswith("dicom-") and "pat1" not in rec.source
    rec, = FolderReader(tmp_path, window=None)  # the paper's interval mapping
    np.testing.assert_array_equal(rec.pixels, interval_map(hu))


def test_folder_png_patients_splits_masks(tmp_path):
    rows = [("x/p1 a.png", 0, "alice", "train"), ("x/p1 b.png", 1, "alice", "train"), ("y/q.jpg", 2, "", "test"),
            ("d/s.dcm", 0, "bob", "")]
    make_folder(tmp_path, rows)
    m = np.zeros((6, 6), np.uint8)
    m[1, 1] = 7
    (tmp_path / "masks" / "x").mkdir(parents=True)
    Image.fromarray(m).save(tmp_path / "masks" / "x" / "p1 a.png")
    reader = FolderReader(tmp_path, masks_root=tmp_path / "masks")
    recs = list(reader)
    assert reader.num_classes == 3 and [r.label for r in recs] == [0, 1, 2, 0]
    assert [r.patient for r in recs] == ["alice", "alice", "q", "bob"]  # CSV, else (PNG) stem
    assert [r.split for r in recs] == ["train", "train", "test", ""]
    assert recs[0].source == "x/p1 a.png" and recs[0].pixels.shape == (6, 6)
    assert recs[0].mask.sum() == 1 and recs[0].mask[1, 1] == 1 and recs[1].mask is None
    assert reader.counts["images_without_mask"] == 3 and reader.counts["dicom_files"] == 1
    # where the patient keys came from, said in the store summary with what a file-name key means
    assert (reader.counts["patients_from_csv"], reader.counts["patients_from_file_name"]) == (3, 1)
    from ssl_lib.data.views import patients_from, read_as

    meta = {"reader": {"kind": "folder", "counts": dict(reader.counts), "options": {"window": [35.0, 80.0]}}}
    assert read_as(meta) == "DICOM, window 35/80 HU + PNG/JPG as given (grey)"
    said = patients_from(meta)
    assert said.startswith("labels CSV (3 files), file name (1 file)") and "its own patient" in said
    png_only = {"reader": {"kind": "folder", "counts": {"images": 4, "patients_from_csv": 4}, "options": {}}}
    assert read_as(png_only) == "PNG/JPG as given (grey)" and patients_from(png_only) == "labels CSV (4 files)"


def test_folder_non_ct_is_an_error(tmp_path):
    make_folder(tmp_path, [("a.png", 0, None, None), ("b.dcm", 1, None, None)])
    write_ct(tmp_path / "b.dcm", np.zeros((6, 6)), modality="MR")
    with pytest.raises(StoreError, match=r"b\.dcm: modality MR, not CT"):
        list(FolderReader(tmp_path))
    reader = FolderReader(tmp_path, skip_bad=True, salt="k")
    assert len(list(reader)) == 1
    (name, reason), = reader.skipped.rows
    assert name.startswith("dicom-") and reason == "modality MR, not CT"


def test_folder_bad_inputs(tmp_path):
    make_folder(tmp_path, [("a.png", 0, None, None), ("b.png", 1, None, None)])
    (tmp_path / "b.png").unlink()
    with pytest.raises(StoreError, match=r"b\.png: listed in labels\.csv but missing \(labels CSV: .*labels\.csv\)"):
        list(FolderReader(tmp_path))
    reader = FolderReader(tmp_path, skip_bad=True)
    assert len(list(reader)) == 1 and reader.skipped.rows[0][0] == "b.png"
    # non-integer label
    (tmp_path / "labels.csv").write_text("file,label\na.png,0\na.png,maybe\n")
    with pytest.raises(StoreError, match=r"labels\.csv line 3 \(a\.png\): label 'maybe' is not an integer"):
        FolderReader(tmp_path)
    assert len(FolderReader(tmp_path, skip_bad=True).rows) == 1
    # wrong columns, bad split
    (tmp_path / "labels.csv").write_text("path,class\na.png,0\n")
    with pytest.raises(StoreError, match=r"lacks column\(s\) \['file', 'label'\]; columns found: \['path', 'class'\]"):
        FolderReader(tmp_path)
    (tmp_path / "labels.csv").write_text("file,label,split\na.png,0,holdout\n")
    with pytest.raises(StoreError, match="split 'holdout'"):
        FolderReader(tmp_path)
    # a corrupt DICOM and a file that is no image at all
    (tmp_path / "c.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    (tmp_path / "labels.csv").write_text("file,label\nc.dcm,0\n")
    with pytest.raises(StoreError, match=r"c\.dcm: corrupt DICOM file"):
        list(FolderReader(tmp_path))
    write_ct(tmp_path / "c.dcm", np.zeros((6, 6)))
    (tmp_path / "c.dcm").write_bytes((tmp_path / "c.dcm").read_bytes()[:-20])  # truncated pixel data
    with pytest.raises(StoreError, match=r"c\.dcm: pixel data could not be decoded") as info:
        list(FolderReader(tmp_path))
    assert info.value.__cause__ is not None
    (tmp_path / "labels.csv").write_text("file,label\nnotes.txt,0\n")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match=r"notes\.txt: not a DICOM file"):
        list(FolderReader(tmp_path))


def test_folder_empty(tmp_path):
    with pytest.raises(StoreError, match=r"labels\.csv: labels CSV not found \(the folder is empty\)"):
        FolderReader(tmp_path)
    (tmp_path / "labels.csv").write_text("file,label\n")
    with pytest.raises(StoreError, match="no rows"):
        FolderReader(tmp_path)
    (tmp_path / "labels.csv").write_text("")
    with pytest.raises(StoreError, match="unreadable or empty"):
        FolderReader(tmp_path)


def test_lidc_file_with_truncated_header_is_bad_not_a_silent_series_skip(tmp_path):
    folder = tmp_path / "LIDC-IDRI" / "P" / "st" / "se"
    write_series(folder, 11)
    victim = sorted(folder.glob("*.dcm"))[3]
    victim.write_bytes(victim.read_bytes()[:300])  # header cut before Modality
    with pytest.raises(StoreError, match=rf"{victim.name}: corrupt DICOM file"):
        list(LidcReader(tmp_path))
    reader = LidcReader(tmp_path, skip_bad=True)
    assert len(list(reader)) == 10 and reader.counts["skipped_series_non_ct"] == 0
