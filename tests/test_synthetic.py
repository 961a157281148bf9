"""Tests of the synthetic CT sources (ssl_lib.data.synthetic, ssl_lib.data.phantom), smoke profile.

Files are validated directly with pydicom / PIL / numpy, in the layouts of the real data sets.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from ssl_lib.data import synthetic as syn
from ssl_lib.data.phantom import ORGAN_CLASSES
from ssl_lib.profiles import SYNTHETIC_NAMES, synthetic_profile
from ssl_lib.data.synthetic import (SyntheticError, body_slice_hu, chest_slice_hu, head_slice_hu,
                                    make_synthetic, task_difficulty, task_settings)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _hu(ds) -> np.ndarray:
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("a") / "synthetic", "smoke", seed=0)


# ------------------------------------------------------------------------------------------ API
def test_sources_paths_and_marker(src):
    assert src.lidc == src.root / "LIDC-IDRI" and src.lidc.is_dir()
    for p in (src.covid, src.covid_masks, src.brain, src.brain_masks):
        assert p.is_dir()
    assert src.organs_npz.is_file() and src.brain_labels.is_file()
    marker = json.loads((src.root / "synthetic.json").read_text())
    assert (marker["profile"], marker["seed"], marker["difficulty"]) == ("smoke", 0, 0.5)
    assert set(SYNTHETIC_NAMES) >= {"smoke", "quick", "paper-demo"}


def test_bad_arguments(tmp_path):
    with pytest.raises(SyntheticError, match="profile"):
        make_synthetic(tmp_path / "s", "nope")
    with pytest.raises(SyntheticError, match="difficulty"):
        make_synthetic(tmp_path / "s", "smoke", difficulty=1.5)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SyntheticError, match="refusing"):
        make_synthetic(foreign, "smoke")
    assert (foreign / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------------------ determinism, idempotence, atomicity
def test_same_seed_identical_other_seed_different_and_replaced(src, tmp_path):
    root = tmp_path / "synthetic"
    make_synthetic(root, "smoke", seed=0)
    a, b = _files(src.root), _files(root)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]
    # another seed replaces the older set in place and differs
    make_synthetic(root, "smoke", seed=1)
    c = _files(root)
    assert json.loads(c["synthetic.json"])["seed"] == 1
    assert c["organsmnist.npz"] != a["organsmnist.npz"]
    dcm_a = {v for k, v in a.items() if k.endswith(".dcm")}
    dcm_c = {v for k, v in c.items() if k.endswith(".dcm")}
    assert dcm_c and not dcm_a & dcm_c
    assert not list(tmp_path.glob(".synthetic.*"))       # no temporary or old folders left


def test_idempotent_second_call_rewrites_nothing(src):
    files = sorted(src.root.rglob("*.dcm"))[:3] + [src.root / "synthetic.json", src.organs_npz]
    before = [p.stat().st_mtime_ns for p in files]
    again = make_synthetic(src.root, "smoke", seed=0)
    assert again == src
    assert [p.stat().st_mtime_ns for p in files] == before


def test_killed_run_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "synthetic"
    (tmp_path / ".synthetic.tmp-stale").mkdir()              # left by an earlier killed run

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(syn, "_write_organs", boom)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(root, "smoke", seed=0)
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ LIDC-IDRI
def _series(src):
    out = {}
    for f in src.lidc.glob("LIDC-IDRI-*/*/*/*.dcm"):
        out.setdefault(f.parent, []).append(f)
    return out


def test_lidc_tree_and_ct_series(src):
    patients = sorted(p.name for p in src.lidc.iterdir())
    assert patients == [f"LIDC-IDRI-{i:04d}" for i in range(1, synthetic_profile("smoke").lidc_patients + 1)]
    series = _series(src)
    ct = {k: v for k, v in series.items() if len(v) > 10}
    assert len(ct) == len(patients)
    intercepts = set()
    for folder, files in ct.items():
        dss = [pydicom.dcmread(f) for f in files]
        for ds in dss:
            assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.BitsAllocated == 16 and ds.PixelRepresentation in (0, 1)
            assert float(ds.RescaleSlope) == 1.0
            assert ds.Rows == ds.Columns == synthetic_profile("smoke").lidc_size
            assert float(ds.SliceThickness) > 0 and len(ds.PixelSpacing) == 2
            assert ds.PatientName and ds.PatientBirthDate and ds.StudyDate
            assert ds.PatientID == folder.parts[-3]
            assert ds.SOPInstanceUID.is_valid and ds.StudyInstanceUID.is_valid
        intercepts.add(float(dss[0].RescaleIntercept))
        assert len({ds.SeriesInstanceUID for ds in dss}) == 1
        assert len({ds.SOPInstanceUID for ds in dss}) == len(dss)
        # slices are shuffled: the file-name order is not the position order
        z = [float(ds.ImagePositionPatient[2]) for ds in dss]
        by_pos = np.argsort(z)
        assert len(set(z)) == len(z)
        assert list(by_pos) != list(range(len(z))) and list(by_pos) != list(range(len(z)))[::-1]
        # tissue ranges in HU in the middle of the scan: air/lung below -500, bone above 300
        mid = _hu(dss[by_pos[len(z) // 2]])
        assert (mid < -500).mean() > 0.3 and (mid > 300).sum() > 20
        assert -2100 <= mid.min() and mid.max() < 3100
        lung_like = ((mid > -950) & (mid < -700)).mean()
        assert lung_like > 0.03
    assert len(intercepts) > 1                                  # varies between patients


def test_lidc_tiny_non_ct_series_per_patient(src):
    series = _series(src)
    for patient in src.lidc.iterdir():
        small = [v for k, v in series.items() if k.parts[-3] == patient.name and len(v) <= 10]
        assert len(small) == 1 and 1 <= len(small[0]) <= 2
        ds = pydicom.dcmread(small[0][0])
        assert ds.Modality == "DX" and ds.SOPClassUID != pydicom.uid.CTImageStorage


# ------------------------------------------------------------------------------------------ COVID-CT
def test_covid_layout_names_formats_and_splits(src):
    split_files = {c: {s: src.covid / "Data-split" / c / f"{s}CT_{c}.txt" for s in ("train", "val", "test")}
                   for c in ("COVID", "NonCOVID")}
    counts = {}
    for c, files in split_files.items():
        on_disk = {p.name for p in (src.covid / f"CT_{c}").iterdir()}
        listed, patients = [], {}
        for s, f in files.items():
            assert f.is_file()
            names = [n for n in f.read_text().splitlines() if n]
            listed += names
            for n in names:
                assert "%" in n
                patients.setdefault(n.split("%")[0], set()).add(s)
        assert sorted(listed) == sorted(on_disk)
        assert all(f.read_text().strip() for f in files.values())   # every split has images
        assert all(len(s) == 1 for s in patients.values())   # a patient lies in one split
        assert all(1 <= sum(n.startswith(p + "%") for n in listed) <= 3 for p in patients)
        counts[c] = len(listed)
    assert abs(counts["COVID"] - counts["NonCOVID"]) <= 1
    assert sum(counts.values()) == synthetic_profile("smoke").covid_images
    images = list((src.covid / "CT_COVID").iterdir()) + list((src.covid / "CT_NonCOVID").iterdir())
    suffixes = {p.suffix for p in images}
    modes = {Image.open(p).mode for p in images if p.suffix == ".png"}
    assert suffixes == {".png", ".jpg"} and {"L", "RGB", "RGBA"} <= modes
    sizes = {Image.open(p).size for p in images}
    assert len(sizes) > 5 and all(100 <= s <= 160 for wh in sizes for s in wh)


def test_covid_masks_align_with_ground_glass(src):
    from ssl_lib.data.intensity import to_grey
    lung_lo, lung_hi = (np.array([-950.0, -780.0]) + 1250) * 255 / 1500   # lung parenchyma grey
    n_checked = 0
    for c in ("COVID", "NonCOVID"):
        for img_path in (src.covid / f"CT_{c}").iterdir():
            mask = np.asarray(Image.open(src.covid_masks / f"CT_{c}" / f"{img_path.stem}.png"))
            grey = to_grey(np.asarray(Image.open(img_path)))
            assert mask.shape == grey.shape and set(np.unique(mask)) <= {0, 255}
            if c == "NonCOVID":
                assert not mask.any()
                continue
            assert mask.any()
            lung = (grey >= lung_lo) & (grey <= lung_hi) & (mask == 0)
            assert np.median(grey[mask > 0]) > np.median(grey[lung]) + 3
            n_checked += 1
    assert n_checked >= 10


# ------------------------------------------------------------------------------------------ OrganSMNIST
def test_organ_npz_keys_shapes_labels_balance(src):
    z = np.load(src.organs_npz)
    sizes = {}
    for s in ("train", "val", "test"):
        im, lb, mk = z[f"{s}_images"], z[f"{s}_labels"], z[f"{s}_masks"]
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[1:] == (28, 28)
        assert lb.shape == (len(im), 1) and lb.dtype.kind in "iu"
        assert mk.shape == im.shape and mk.dtype == np.uint8 and set(np.unique(mk)) <= {0, 255}
        counts = np.bincount(lb[:, 0], minlength=11)
        assert len(counts) == 11 and (counts > 0).all() and counts.max() == counts.min()
        sizes[s] = len(im)
        # the organ is roughly centred and differs from its surroundings
        assert (mk > 0).reshape(len(mk), -1).any(1).all()
        yy, xx = np.mgrid[:28, :28]
        w = (mk > 0).astype(float)
        cy = (w * yy).sum((1, 2)) / w.sum((1, 2))
        cx = (w * xx).sum((1, 2)) / w.sum((1, 2))
        assert np.median(np.hypot(cy - 13.5, cx - 13.5)) < 6
        diff = [abs(im[i][mk[i] > 0].mean() - im[i][mk[i] == 0].mean()) for i in range(len(im)) if (mk[i] == 0).any()]
        assert np.median(diff) > 10
    assert sizes["train"] >= 11 * 11 and sizes["val"] > 0 and sizes["test"] > 0
    assert set(z.files) == {f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels", "masks")}


def test_organ_laterality_visible():
    """Left and right organs are mirror positions: the patient's left lies on the image right."""
    _, m = body_slice_hu("abdomen", 96, seed=3)
    _, p = body_slice_hu("pelvis", 96, seed=3)
    xs = np.arange(96)[None, :].repeat(96, 0)
    for masks, left, right in ((m, "kidney-left", "kidney-right"), (p, "femur-left", "femur-right")):
        assert xs[masks[left]].mean() > 48 > xs[masks[right]].mean()


# ------------------------------------------------------------------------------------------ Brain
def test_brain_dicom_labels_and_masks(src):
    with open(src.brain_labels, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "label"]
    rows = rows[1:]
    assert len(rows) == synthetic_profile("smoke").brain_images
    labels = np.array([int(l) for _, l in rows])
    assert set(labels) == {0, 1} and 0.35 <= labels.mean() <= 0.65
    per_patient, ids = {}, {}
    for rel, label in rows:
        parts = Path(rel).parts
        assert len(parts) == 2 and parts[1].endswith(".dcm")
        per_patient.setdefault(parts[0], []).append(int(label))
        ds = pydicom.dcmread(src.brain / rel)
        assert ds.Modality == "CT" and ds.PatientName and float(ds.RescaleSlope) == 1.0
        ids.setdefault(parts[0], set()).add(ds.PatientID)
        hu = _hu(ds)
        assert hu.max() > 300                                   # skull
        mask = np.asarray(Image.open(src.brain_masks / Path(rel).with_suffix(".png")))
        assert mask.shape == hu.shape and set(np.unique(mask)) <= {0, 255}
        if int(label):
            assert mask.any()
            assert np.median(hu[mask > 0]) > _centre_hu(hu, mask) + 5
        else:
            assert not mask.any()
    assert all(1 <= len(v) <= 2 and len(set(v)) == 1 for v in per_patient.values())
    assert all(len(v) == 1 for v in ids.values())


def _centre_hu(hu: np.ndarray, mask: np.ndarray) -> float:
    """Median HU of the head's central box (brain parenchyma), lesion pixels left out."""
    h, w = hu.shape
    box = np.zeros(hu.shape, bool)
    box[int(0.4 * h):int(0.6 * h), int(0.4 * w):int(0.6 * w)] = True
    return float(np.median(hu[box & (mask == 0)]))


def test_brain_overall_brightness_varies_in_both_classes(src):
    """Every scan gets its own soft-tissue calibration offset (uniform in +-offset_hu), so how
    bright a head is does not tell whether it bleeds: without it the parenchyma's median varies
    by the grey/white matter draws only (about 6 HU)."""
    with open(src.brain_labels, newline="") as f:
        rows = list(csv.reader(f))[1:]
    centre = {0: [], 1: []}
    for rel, label in rows:
        hu = _hu(pydicom.dcmread(src.brain / rel))
        mask = np.asarray(Image.open(src.brain_masks / Path(rel).with_suffix(".png")))
        centre[int(label)].append(_centre_hu(hu, mask))
    offset = task_settings(synthetic_profile("smoke").difficulty)["brain"]["offset_hu"]
    assert offset >= 15
    for values in centre.values():
        assert np.ptp(values) > offset  # each class spans more than half the offset range
    assert task_settings(1.0)["brain"]["offset_hu"] > task_settings(0.0)["brain"]["offset_hu"] > 0


# ------------------------------------------------------------------------------------------ phantom helpers, difficulty
def test_chest_render_tissue_ranges_and_z_variation():
    hu, m = chest_slice_hu(96, z=0.65, seed=2, noise_hu=0)
    lung = m["lung-left"] | m["lung-right"]
    assert np.median(hu[lung & ~m["vessel"]]) < -500
    assert np.median(hu[m["bone"]]) > 300
    assert m["heart"].any() and 0 < np.median(hu[m["heart"]]) < 80
    _, top = chest_slice_hu(96, z=0.1, seed=2)
    assert not top["heart"].any()
    assert (top["lung-left"] | top["lung-right"]).sum() < lung.sum()
    g0, mg = chest_slice_hu(96, z=0.65, seed=2, ggo=0.15, noise_hu=0)
    assert mg["lesion"].any() and (mg["lesion"] <= lung).all()
    assert np.median(g0[mg["lesion"]]) > np.median(hu[mg["lesion"]]) + 100


def test_head_render_bleed_is_hyperdense():
    hu, m = head_slice_hu(96, seed=1, bleed={"kind": "iph", "hu": 70.0, "size": 0.08, "pos": (0.3, 0.2)}, noise_hu=0)
    assert m["lesion"].any() and abs(np.median(hu[m["lesion"]]) - 70) < 5
    hu2, m2 = head_slice_hu(96, seed=1, bleed={"kind": "sdh", "hu": 70.0, "size": 0.08, "pos": 1.0}, noise_hu=0)
    assert m2["lesion"].any() and (m2["lesion"] & ~m2["brain"]).any()
    _, m0 = head_slice_hu(96, seed=1)
    assert not m0["lesion"].any() and np.median(hu[m["bone"]]) > 300


def test_difficulty_per_task(tmp_path):
    d = {"covid": 0.0, "organs": 0.5, "brain": 1.0}
    src = make_synthetic(tmp_path / "s", "smoke", seed=0, difficulty=d)
    marker = json.loads((src.root / "synthetic.json").read_text())
    assert marker["difficulty"] == d
    assert marker["settings"] == json.loads(json.dumps({t: task_settings(v)[t] for t, v in d.items()}))
    assert task_difficulty(0.3) == {"covid": 0.3, "organs": 0.3, "brain": 0.3}
    with pytest.raises(SyntheticError, match="brain"):
        task_difficulty({"covid": 0.0, "organs": 0.5, "brain": 1.5})
    with pytest.raises(SyntheticError, match="exactly the tasks"):
        make_synthetic(tmp_path / "t", "smoke", difficulty={"covid": 0.0})
    assert not (tmp_path / "t").exists()


def test_difficulty_makes_tasks_harder():
    easy, hard = task_settings(0.0), task_settings(1.0)
    assert easy["covid"]["ggo_hu"][1] > hard["covid"]["ggo_hu"][1]
    assert easy["covid"]["ggo_area"][1] > hard["covid"]["ggo_area"][1]
    assert easy["brain"]["blood_hu"][1] > hard["brain"]["blood_hu"][1]
    assert easy["brain"]["size"][1] > hard["brain"]["size"][1]
    assert easy["organs"]["jitter"] < hard["organs"]["jitter"]
    assert easy["organs"]["noise_hu"][1] < hard["organs"]["noise_hu"][1]
