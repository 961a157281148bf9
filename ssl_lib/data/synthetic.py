"""Built-in synthetic CT data in the real data sets' layouts, deterministic from a seed.

With no data at hand the study runs on these stand-ins for the four sources of Wolf et al. 2023
(the anatomy is drawn in :mod:`ssl_lib.data.phantom`)::

    root/
      synthetic.json                       marker, written last: profile, seed, difficulty, counts
      LIDC-IDRI/LIDC-IDRI-0001/<study>/<series>/1-007.dcm ...   unlabeled chest CT, DICOM series
                                                                (+ a 1-2 image DX series per patient)
      COVID-CT/CT_COVID/*.png|jpg, CT_NonCOVID/*, Data-split/{COVID,NonCOVID}/{train,val,test}CT_*.txt
      COVID-CT-masks/{CT_COVID,CT_NonCOVID}/<file stem>.png      ground-glass masks (0/255)
      organsmnist.npz                      MedMNIST keys + {train,val,test}_masks (28 x 28)
      Brain/<case>/<n>.dcm, Brain/labels.csv (file,label)       head CT, 1 = hemorrhage
      Brain-masks/<case>/<n>.png                               hemorrhage masks (0/255)

``make_synthetic`` writes into a temporary sibling folder and renames it into place, so ``root``
is either complete or untouched; a second call with the same (profile, seed, difficulty) only
reads the marker.

``difficulty`` in [0, 1] (default 0.5) sets how separable the labeled tasks are: lesion
contrast and size shrink, noise and crop jitter grow with it (see :func:`task_settings`). At
0.5 a small CNN should land well above chance but below perfect. It is one number for all
tasks or one per task (``{"covid": ..., "organs": ..., "brain": ...}``, see :func:`task_difficulty`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ..errors import SslCtError
from ..profiles import SYNTHETIC_NAMES, SyntheticProfile, synthetic_profile
from .intensity import window
from .phantom import (LZ, ORGAN_CLASSES, ORGAN_LEVEL, add_ggo, body_slice_hu, chest_slice_hu, finish, grid,
                      head_slice_hu, render_head, render_trunk, sample_head, sample_trunk)

__all__ = ["SyntheticProfile", "SyntheticSources", "SyntheticError", "make_synthetic",
           "task_settings", "task_difficulty", "chest_slice_hu", "body_slice_hu", "head_slice_hu", "ORGAN_CLASSES"]

#: Bump when the generated content changes, so old folders are regenerated.
GENERATOR_VERSION = 2
MARKER = "synthetic.json"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"       # Digital X-Ray Image Storage - For Presentation
#: COVID-CT window (HU) before the 8-bit PNGs: -1250..250.
COVID_WINDOW = (-500.0, 1500.0)
#: Abdominal window for the organ crops (centre, width).
ORGAN_WINDOW = (40.0, 400.0)
#: Paper split sizes of COVID-CT (train/val/test), used as fractions.
COVID_SPLIT = (425, 118, 203)


class SyntheticError(SslCtError, ValueError):
    """Bad arguments or a target folder that is not ours to overwrite."""


@dataclass(frozen=True)
class SyntheticSources:
    """Where the synthetic sources lie (each in its real data set's layout)."""

    root: Path
    lidc: Path          # the LIDC-IDRI folder
    covid: Path         # COVID-CT root (CT_COVID/, CT_NonCOVID/, Data-split/)
    covid_masks: Path   # CT_COVID/<stem>.png, CT_NonCOVID/<stem>.png
    organs_npz: Path    # MedMNIST-style npz with *_masks
    brain: Path         # <case>/<n>.dcm
    brain_labels: Path  # CSV file,label
    brain_masks: Path   # <case>/<n>.png


def sources_at(root: str | os.PathLike) -> SyntheticSources:
    """The :class:`SyntheticSources` paths under ``root`` (whether or not they exist yet)."""
    r = Path(root)
    return SyntheticSources(r, r / "LIDC-IDRI", r / "COVID-CT", r / "COVID-CT-masks", r / "organsmnist.npz",
                            r / "Brain", r / "Brain" / "labels.csv", r / "Brain-masks")


LABELED_TASKS = ("covid", "organs", "brain")


def task_difficulty(difficulty: float | dict) -> dict[str, float]:
    """``difficulty`` (one number, or one per task of :data:`LABELED_TASKS`) as ``{task: d}``,
    each checked to lie in [0, 1]."""
    if isinstance(difficulty, dict):
        if set(difficulty) != set(LABELED_TASKS):
            raise SyntheticError(f"difficulty per task needs exactly the tasks {LABELED_TASKS}, got {sorted(difficulty)}")
        per_task = {t: float(difficulty[t]) for t in LABELED_TASKS}
    else:
        per_task = dict.fromkeys(LABELED_TASKS, float(difficulty))
    for task, d in per_task.items():
        if not 0.0 <= d <= 1.0:
            raise SyntheticError(f"difficulty must lie in [0, 1], got {d} for {task}")
    return per_task


def task_settings(difficulty: float) -> dict:
    """What ``difficulty`` in [0, 1] means for each labeled task (ranges are sampled per image).

    * covid: ground-glass contrast ``ggo_hu`` above the lung (HU), lung fraction covered
      ``ggo_area``, noise std (HU) and the dependent-density confounder (HU, both classes).
    * organs: crop-centre jitter (fraction of the crop), crop margin around the organ, noise (HU),
      window centre shift (HU) and relative width change per crop, blur (pixels of the 56 px render
      before 2x2 averaging); organ HU also vary per patient.
    * brain: blood excess over grey matter (HU), lesion size (field units), noise (HU) and the
      per-scan calibration offset of all soft tissue (HU, both classes; uniform in +-``offset_hu``),
      so that how bright a head is overall does not tell whether it bleeds.
    """
    d = float(difficulty)
    return {
        "covid": {"ggo_hu": (0.4 * (700 - 300 * d), 700 - 300 * d), "ggo_area": (0.08, 0.15 + 0.35 * (1 - d)),
                  "noise_hu": (15 + 10 * d, 25 + 20 * d), "gravity_hu": (0.0, 30 + 100 * d)},
        "organs": {"jitter": 0.08 + 0.24 * d, "margin": (1.05, 1.2 + 1.2 * d), "noise_hu": (20 + 50 * d, 30 + 90 * d),
                   "window_shift_hu": 120 * d, "window_scale": 0.6 * d, "blur_px": 0.8 + 2.0 * d},
        "brain": {"blood_hu": (0.5 * (80 - 40 * d), 80 - 40 * d), "size": (0.06, 0.1 + 0.12 * (1 - d)),
                  "noise_hu": (2 + 3 * d, 3 + 6 * d), "offset_hu": 8 + 24 * d},
    }


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def make_synthetic(root: str | os.PathLike, profile: str = "quick", seed: int = 0, difficulty: float | dict | None = None,
                   progress: bool = False) -> SyntheticSources:
    """Write the synthetic sources under ``root`` (or find them there) -> :class:`SyntheticSources`.

    Deterministic: the same (profile, seed, difficulty) gives byte-identical files. Idempotent:
    when ``root/synthetic.json`` names the same (profile, seed, difficulty, generator version)
    nothing is rewritten. Atomic: everything is written into a temporary sibling folder that is
    renamed to ``root`` at the end (an existing ``root`` is replaced only if it is empty or holds
    an older synthetic set).
    """
    if profile not in SYNTHETIC_NAMES:
        raise SyntheticError(f"unknown synthetic profile {profile!r}; choose one of {sorted(SYNTHETIC_NAMES)}")
    prof = synthetic_profile(profile)
    given = prof.difficulty if difficulty is None else difficulty
    d = task_difficulty(given)
    seed = int(seed)
    root = Path(root)
    src = sources_at(root)
    shown = round(d["covid"], 6) if len(set(d.values())) == 1 else {t: round(v, 6) for t, v in d.items()}
    key = {"generator": GENERATOR_VERSION, "profile": profile, "seed": seed, "difficulty": shown}
    marker = root / MARKER
    if marker.is_file():
        try:
            found = json.loads(marker.read_text())
        except (OSError, ValueError):
            found = {}
        if all(found.get(k) == v for k, v in key.items()):
            return src
    elif root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SyntheticError(f"{root}: exists, is not empty and holds no {MARKER}; refusing to overwrite it")
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        t = sources_at(tmp)
        counts = {
            "lidc": _write_lidc(t, prof, seed, progress),
            "covid": _write_covid(t, prof, seed, d["covid"], progress),
            "organs": _write_organs(t, prof, seed, d["organs"], progress),
            "brain": _write_brain(t, prof, seed, d["brain"], progress),
        }
        settings = {t: task_settings(v)[t] for t, v in d.items()}
        info = {**key, "counts": counts, "sizes": asdict(prof), "settings": settings}
        (tmp / MARKER).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        if root.exists():
            old = root.with_name(f".{root.name}.old-{secrets.token_hex(4)}")
            root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return src


def _remove_stale(root: Path) -> None:
    """Temporary folders a killed run left beside ``root``."""
    for p in root.parent.glob(f".{root.name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in root.parent.glob(f".{root.name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)


def _rng(seed: int, task: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, task, index])


def _bar(it, progress: bool, desc: str):
    if not progress:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------
#: (PixelRepresentation, RescaleIntercept, BitsStored) a patient's scanner may use.
_ENCODINGS = ((0, -1024.0, 12), (1, -1024.0, 16), (1, 0.0, 16), (0, -2048.0, 16))


def _fake_person(rng: np.random.Generator) -> dict:
    first = ("ALEX", "SAM", "KIM", "ROBIN", "JO", "CHRIS", "ANDY", "LEE")[rng.integers(8)]
    return {"PatientName": f"SYNTH^{first}{rng.integers(100, 999)}",
            "PatientBirthDate": f"{rng.integers(1930, 2000)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
            "PatientSex": ("F", "M")[rng.integers(2)]}


def _encode(hu: np.ndarray, enc: tuple) -> tuple[np.ndarray, dict]:
    signed, intercept, bits = enc
    lo, hi = (-32768, 32767) if signed else (0, (1 << bits) - 1)
    stored = np.clip(np.rint(hu - intercept), lo, hi).astype(np.int16 if signed else np.uint16)
    return stored, {"PixelRepresentation": signed, "RescaleIntercept": intercept, "BitsStored": bits}


def _dicom(pixels: np.ndarray, *, sop_class: str, uids: dict, tags: dict) -> Dataset:
    """A single-frame DICOM data set (explicit VR little endian) of ``pixels`` (u)int16 ``(H, W)``."""
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = uids["sop"]
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uids["sop"]
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Manufacturer = "ssl-ct synthetic phantom"
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    if "BitsStored" not in tags:
        ds.BitsStored = 16
    ds.HighBit = ds.BitsStored - 1
    if "PixelRepresentation" not in tags:
        ds.PixelRepresentation = int(pixels.dtype == np.int16)
    _set_pixels(ds, pixels)
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    ds.PixelData = np.ascontiguousarray(pixels.astype("<i2" if ds.PixelRepresentation else "<u2")).tobytes()


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_dicom(path: Path, pixels: np.ndarray, *, sop_class: str, uids: dict, tags: dict) -> None:
    _save(_dicom(pixels, sop_class=sop_class, uids=uids, tags=tags), path)


def _ds(x: float) -> str:
    return f"{x:.4f}".rstrip("0").rstrip(".") or "0"


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=["ssl-ct-synthetic", *map(str, parts)])


# --------------------------------------------------------------------------------------------
# LIDC-IDRI: unlabeled chest CT series
# --------------------------------------------------------------------------------------------
def _write_lidc(t: SyntheticSources, prof: SyntheticProfile, seed: int, progress: bool) -> dict:
    n_slices_total = 0
    for p in _bar(range(prof.lidc_patients), progress, "synthetic LIDC-IDRI"):
        rng = _rng(seed, 1, p)
        trunk = sample_trunk(rng)
        pid = f"LIDC-IDRI-{p + 1:04d}"
        person = _fake_person(rng)
        year, month, day = int(rng.integers(1998, 2012)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        date = f"{year}{month:02d}{day:02d}"
        study = f"{month:02d}-{day:02d}-{year}-NA-CT THORAX-{rng.integers(10000, 99999)}"
        series = f"{rng.integers(3000500, 3000999)}.000000-NA-{rng.integers(10000, 99999)}"
        n = prof.lidc_slices + (int(rng.integers(-prof.lidc_slices_jitter, prof.lidc_slices_jitter + 1))
                                if prof.lidc_slices_jitter else 0)
        thick = float(rng.choice([1.25, 1.5, 2.0, 2.5]))
        fov = float(rng.uniform(320, 420))
        spacing = fov / prof.lidc_size
        enc = _ENCODINGS[(p + seed) % len(_ENCODINGS)]     # patients differ in encoding
        noise = float(rng.uniform(20, 40))
        z0 = float(rng.uniform(-350, -150))
        x0 = -fov / 2 + float(rng.normal(0, 5))
        y0 = -fov / 2 + float(rng.normal(0, 5))
        names = rng.permutation(n) + 1
        X, Y, _ = grid(prof.lidc_size)
        fov_out = (X ** 2 + Y ** 2) > 1.0
        su = {"study": _uid(seed, pid, "study"), "series": _uid(seed, pid, "series"), "frame": _uid(seed, pid, "frame")}
        folder = t.lidc / pid / study / series
        ds = None
        for k in range(n):                              # k = 0 at the feet (lowest z)
            znorm = 1.0 - k / (n - 1)                   # anatomy z: 0 = lung apex
            hu, _ = render_trunk(trunk, "chest", znorm, X, Y, half_slab=LZ / (n - 1) / 2)
            hu = finish(hu, rng, noise)
            if enc[0] == 1 and enc[1] < 0:
                hu[fov_out] = -2000.0                   # outside the reconstruction circle
            stored, rescale = _encode(hu, enc)
            zpos = z0 + k * thick
            sop = _uid(seed, pid, "ct", k)
            if ds is not None:                          # same series: only per-slice tags change
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
                ds.InstanceNumber = n - k
                ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(zpos)]
                ds.SliceLocation = _ds(zpos)
                _set_pixels(ds, stored)
                _save(ds, folder / f"1-{names[k]:03d}.dcm")
                continue
            tags = {"Modality": "CT", "PatientID": pid, "PatientName": person["PatientName"],
                    "PatientBirthDate": person["PatientBirthDate"], "PatientSex": person["PatientSex"],
                    "StudyDate": date, "SeriesDate": date, "StudyTime": "120000", "AccessionNumber": f"{rng.integers(10**6, 10**7)}",
                    "StudyID": f"{p + 1}", "SeriesNumber": 3000 + p, "InstanceNumber": n - k, "BodyPartExamined": "CHEST",
                    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "KVP": "120",
                    "ImagePositionPatient": [_ds(x0), _ds(y0), _ds(zpos)], "ImageOrientationPatient": ["1", "0", "0", "0", "1", "0"],
                    "SliceThickness": _ds(thick), "SliceLocation": _ds(zpos), "PixelSpacing": [_ds(spacing), _ds(spacing)],
                    "RescaleSlope": "1", "RescaleIntercept": _ds(rescale["RescaleIntercept"]), "RescaleType": "HU",
                    "WindowCenter": "-600", "WindowWidth": "1600",
                    "BitsStored": rescale["BitsStored"], "PixelRepresentation": rescale["PixelRepresentation"]}
            ds = _dicom(stored, sop_class=CTImageStorage, uids={**su, "sop": sop}, tags=tags)
            _save(ds, folder / f"1-{names[k]:03d}.dcm")
        n_slices_total += n
        # the radiograph(s) LIDC-IDRI also holds: a tiny non-CT series, in its own study
        n_dx = int(rng.integers(1, 3))
        dx_study = f"{month:02d}-{day:02d}-{year}-NA-XR CHEST-{rng.integers(10000, 99999)}"
        dx_series = f"{rng.integers(1, 9)}.000000-NA-{rng.integers(10000, 99999)}"
        du = {"study": _uid(seed, pid, "dx-study"), "series": _uid(seed, pid, "dx-series"), "frame": _uid(seed, pid, "dx-frame")}
        for k in range(n_dx):
            Xd, Yd, _ = grid(48)
            img = np.clip(3000 - 1500 * ((Xd / 0.7) ** 2 + (Yd / 0.9) ** 2 < 1) + rng.normal(0, 50, Xd.shape), 0, 4095)
            tags = {"Modality": "DX", "PatientID": pid, "PatientName": person["PatientName"], "StudyDate": date,
                    "SeriesNumber": k + 1, "InstanceNumber": k + 1, "PixelSpacing": ["0.7", "0.7"], "BitsStored": 12,
                    "PixelRepresentation": 0}
            _write_dicom(t.lidc / pid / dx_study / dx_series / f"1-{k + 1}.dcm", img.astype(np.uint16),
                         sop_class=DX_STORAGE, uids={**du, "sop": _uid(seed, pid, "dx", k)}, tags=tags)
    return {"patients": prof.lidc_patients, "slices": n_slices_total}


# --------------------------------------------------------------------------------------------
# COVID-CT-like
# --------------------------------------------------------------------------------------------
def _split_patients(rng, sizes: list[int], fractions) -> list[str]:
    """Assign patients (with ``sizes`` images each) to train/val/test by cumulative image count."""
    order = rng.permutation(len(sizes))
    total, acc, out = sum(sizes), 0, [""] * len(sizes)
    f = np.cumsum(np.asarray(fractions, float) / sum(fractions))
    for i in order:
        frac = (acc + sizes[i] / 2) / total
        out[i] = ("train", "val", "test")[int(np.searchsorted(f, frac))]
        acc += sizes[i]
    for split in ("val", "test"):                       # every split gets a patient when possible
        if split not in out and out.count("train") > 1:
            donors = [i for i in order if out[i] == "train"]
            out[min(donors, key=lambda i: sizes[i])] = split
    return out


def _save_image(path: Path, grey: np.ndarray, mode: str) -> None:
    img = Image.fromarray(grey, "L")
    if mode in ("RGB", "RGBA"):
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        img.save(path, quality=92)
    else:
        img.save(path)


#: File formats cycled through (like the real set: mostly grey PNG, some JPG, some RGB/RGBA PNG).
_COVID_FORMATS = ((".png", "L"), (".jpg", "L"), (".png", "RGB"), (".png", "L"), (".jpg", "RGB"),
                  (".png", "RGBA"), (".png", "L"), (".jpg", "L"), (".png", "L"), (".png", "RGBA"))


def _write_covid(t: SyntheticSources, prof: SyntheticProfile, seed: int, d: float, progress: bool) -> dict:
    cfg = task_settings(d)["covid"]
    per_class = {1: (prof.covid_images + 1) // 2, 0: prof.covid_images // 2}
    counts = {}
    for label, cname in ((1, "COVID"), (0, "NonCOVID")):
        patients, p = [], 0
        while sum(len(s) for s in patients) < per_class[label]:
            rng = _rng(seed, 10 + label, p)
            k = min(int(rng.choice([1, 1, 1, 2, 2, 3])), per_class[label] - sum(len(s) for s in patients))
            patients.append([(rng, j) for j in range(k)])
            p += 1
        splits = _split_patients(_rng(seed, 12, label), [len(s) for s in patients], COVID_SPLIT)
        lists = {"train": [], "val": [], "test": []}
        n_img = 0
        for p, slices in enumerate(_bar(patients, progress, f"synthetic {cname}")):
            rng = slices[0][0]
            trunk = sample_trunk(rng)
            trunk.gravity_hu = float(rng.uniform(*cfg["gravity_hu"]))
            if label == 1:
                stem = f"2020.{rng.integers(1, 5):02d}.{rng.integers(1, 29):02d}.{rng.integers(10**7, 10**8)}-p{rng.integers(1, 40)}-{rng.integers(1, 200)}"
            else:
                stem = f"{p}"
            zs = np.sort(rng.uniform(0.4, 0.85, len(slices)))
            for (_, j), z in zip(slices, zs):
                h, w = (int(v) for v in rng.integers(prof.covid_size[0], prof.covid_size[1] + 1, 2))
                X, Y, px = grid((h, w), centre=tuple(rng.normal(0, 0.04, 2)), half=float(rng.uniform(0.8, 1.05)))
                hu, masks = render_trunk(trunk, "chest", float(z), X, Y)
                lung = masks["lung-left"] | masks["lung-right"]
                lesion = np.zeros_like(lung)
                if label == 1:
                    hu, lesion = add_ggo(hu, lung, rng, strength_hu=float(rng.uniform(*cfg["ggo_hu"])),
                                         area=float(rng.uniform(*cfg["ggo_area"])), px=px)
                hu = finish(hu, rng, float(rng.uniform(*cfg["noise_hu"])))
                grey = window(hu, *COVID_WINDOW)
                ext, mode = _COVID_FORMATS[(n_img + seed) % len(_COVID_FORMATS)]
                n_img += 1
                name = f"{stem}%{j}{ext}"
                _save_image(t.covid / f"CT_{cname}" / name, grey, mode)
                _save_image(t.covid_masks / f"CT_{cname}" / f"{Path(name).stem}.png", lesion.astype(np.uint8) * 255, "L")
                lists[splits[p]].append(name)
        for split, names in lists.items():
            f = t.covid / "Data-split" / cname / f"{split}CT_{cname}.txt"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("".join(n + "\n" for n in names))
        counts[cname] = {s: len(v) for s, v in lists.items()}
    return counts


# --------------------------------------------------------------------------------------------
# OrganSMNIST-like
# --------------------------------------------------------------------------------------------
_LEVEL_POS = {"thorax": (0.6, 0.8), "abdomen": (-1.0, 1.0), "pelvis": (-1.0, 1.0)}


def _organ_patient(rng: np.random.Generator, n_slices: int, cfg: dict):
    """All crops of one synthetic patient -> (images (N,28,28), labels (N,), masks (N,28,28))."""
    trunk = sample_trunk(rng)
    Xc, Yc, _ = grid(96)
    imgs, labs, msks = [], [], []
    for level in ("thorax", "abdomen", "pelvis"):
        organs = [o for o in ORGAN_CLASSES if ORGAN_LEVEL[o] == level]
        for _ in range(n_slices):
            pos = float(rng.uniform(*_LEVEL_POS[level]))
            _, masks = render_trunk(trunk, level, pos, Xc, Yc)
            for organ in organs:
                m = masks[organ]
                if m.sum() < 4:                       # should not happen; fall back to the level centre
                    m = masks["body"]
                xs, ys = Xc[m], Yc[m]
                cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
                side = max(xs.max() - xs.min(), ys.max() - ys.min(), 0.08) * rng.uniform(*cfg["margin"])
                cx += rng.uniform(-1, 1) * cfg["jitter"] * side
                cy += rng.uniform(-1, 1) * cfg["jitter"] * side
                X, Y, _ = grid(56, (cx, cy), side / 2)
                hu, cm = render_trunk(trunk, level, pos, X, Y)
                hu = finish(hu, rng, float(rng.uniform(*cfg["noise_hu"])), blur_px=cfg["blur_px"])
                centre = ORGAN_WINDOW[0] + rng.uniform(-1, 1) * cfg["window_shift_hu"]
                width = ORGAN_WINDOW[1] * (1 + rng.uniform(-0.5, 0.5) * cfg["window_scale"])
                g = window(hu, centre, width).astype(np.float32).reshape(28, 2, 28, 2).mean((1, 3))
                mk = cm[organ].astype(np.float32).reshape(28, 2, 28, 2).mean((1, 3)) >= 0.5
                imgs.append(np.rint(g).astype(np.uint8))
                labs.append(ORGAN_CLASSES.index(organ))
                msks.append(mk.astype(np.uint8) * 255)
    return imgs, labs, msks


def _write_organs(t: SyntheticSources, prof: SyntheticProfile, seed: int, d: float, progress: bool) -> dict:
    cfg = task_settings(d)["organs"]
    out, counts, p = {}, {}, 0
    for split, n_pat in zip(("train", "val", "test"), prof.organ_patients):
        imgs, labs, msks = [], [], []
        for _ in _bar(range(n_pat), progress, f"synthetic organs {split}"):
            i, l, m = _organ_patient(_rng(seed, 20, p), prof.organ_slices, cfg)
            imgs += i
            labs += l
            msks += m
            p += 1
        order = _rng(seed, 21, p).permutation(len(imgs))
        out[f"{split}_images"] = np.stack(imgs)[order].astype(np.uint8)
        out[f"{split}_labels"] = np.asarray(labs, np.uint8)[order].reshape(-1, 1)
        out[f"{split}_masks"] = np.stack(msks)[order].astype(np.uint8)
        counts[split] = len(imgs)
    buf = io.BytesIO()
    np.savez_compressed(buf, **out)
    t.organs_npz.write_bytes(buf.getvalue())
    return counts


# --------------------------------------------------------------------------------------------
# Brain hemorrhage-like
# --------------------------------------------------------------------------------------------
def _write_brain(t: SyntheticSources, prof: SyntheticProfile, seed: int, d: float, progress: bool) -> dict:
    cfg = task_settings(d)["brain"]
    rows, n_img, p = [], 0, 0
    X, Y, _ = grid(prof.brain_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=prof.brain_images, desc="synthetic Brain")
    while n_img < prof.brain_images:
        rng = _rng(seed, 30, p)
        label = p % 2
        head = sample_head(rng)
        k = min(int(rng.choice([1, 2])), prof.brain_images - n_img)
        case = f"case{p + 1:03d}"
        person = _fake_person(rng)
        enc = _ENCODINGS[int(rng.integers(3))]
        noise = float(rng.uniform(*cfg["noise_hu"]))
        zc = float(rng.uniform(0.38, 0.62))
        bleed = None
        if label:
            size = float(rng.uniform(*cfg["size"]))
            kind = "iph" if rng.random() < 0.55 else "sdh"
            pos = tuple(rng.uniform(-0.8, 0.8, 2)) if kind == "iph" else float(rng.uniform(0, 2 * np.pi))
            bleed = {"kind": kind, "size": size, "pos": pos}
        blood = float(rng.uniform(*cfg["blood_hu"]))
        zs = zc + np.sort(rng.uniform(-0.05, 0.05, k))
        su = {"study": _uid(seed, case, "study"), "series": _uid(seed, case, "series"), "frame": _uid(seed, case, "frame")}
        nums = np.sort(rng.choice(np.arange(1, 40), k, replace=False))
        date = f"{rng.integers(2015, 2023)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
        patient_id = f"{rng.integers(10**7, 10**8)}"
        offset = float(rng.uniform(-cfg["offset_hu"], cfg["offset_hu"]))
        for j, (z, num) in enumerate(zip(zs, nums)):
            b = None
            if bleed is not None:
                shrink = np.sqrt(max(0.3, 1 - ((z - zc) / 0.08) ** 2))
                b = {**bleed, "size": bleed["size"] * shrink, "hu": head.grey_hu + blood}
            hu, masks = render_head(head, float(z), X, Y, b)
            hu[(hu > -500) & (hu < 300)] += offset  # soft tissue and blood, not air or bone
            hu = finish(hu, rng, noise, blur_px=0.5)
            stored, rescale = _encode(hu, enc)
            sp = 230.0 / prof.brain_size
            tags = {"Modality": "CT", "PatientID": patient_id, "PatientName": person["PatientName"],
                    "PatientBirthDate": person["PatientBirthDate"], "PatientSex": person["PatientSex"], "StudyDate": date,
                    "SeriesNumber": 2, "InstanceNumber": int(num), "BodyPartExamined": "HEAD",
                    "ImagePositionPatient": ["-115", "-115", _ds(float(num) * 5.0)], "ImageOrientationPatient": ["1", "0", "0", "0", "1", "0"],
                    "SliceThickness": "5", "PixelSpacing": [_ds(sp), _ds(sp)], "RescaleSlope": "1",
                    "RescaleIntercept": _ds(rescale["RescaleIntercept"]), "RescaleType": "HU", "WindowCenter": "35",
                    "WindowWidth": "80", "BitsStored": rescale["BitsStored"], "PixelRepresentation": rescale["PixelRepresentation"]}
            rel = f"{case}/{num}.dcm"
            _write_dicom(t.brain / rel, stored, sop_class=CTImageStorage, uids={**su, "sop": _uid(seed, case, "ct", j)}, tags=tags)
            mpath = t.brain_masks / case / f"{num}.png"
            _save_image(mpath, masks["lesion"].astype(np.uint8) * 255, "L")
            rows.append((rel, label))
        n_img += k
        p += 1
        if bar is not None:
            bar.update(k)
    if bar is not None:
        bar.close()
    with open(t.brain_labels, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "label"])
        w.writerows(sorted(rows))
    return {"patients": p, "images": n_img, "hemorrhage": sum(l for _, l in rows)}
