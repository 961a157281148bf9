"""Ingest speed: LIDC-IDRI DICOM -> slice store with 1 and 2 worker processes, next to the authors' pipeline.

Writes a synthetic LIDC-IDRI tree (``patient/study/series/*.dcm``, uncompressed int16 CT slices of
``--hw`` x ``--hw`` with real-sized headers; series of ``--per-series`` slices, shuffled file names),
then, in one run, on the same files:

* ``png (authors' shape)``: one process reads each series with pydicom, sorts it by position,
  converts to HU, maps -1024..3071 HU onto 0..255 and writes one PNG file per slice (the shape of
  the authors' ``LIDC_3DDICOM_to_2Dpng.py``);
* ``store, 1 worker`` / ``store, 2 workers``: :func:`ssl_lib.data.build.build_store` (``"lidc"``,
  the same mapping, no resize) with ``workers=1`` and ``workers=2``.

Prints slices/s, the ratios, and a projection for LIDC-IDRI (244,527 slices) on 16 cores, assuming
the per-worker efficiency measured with 2 workers holds (disk and memory bandwidth permitting).

The PNG pipeline, ~30x slower, is timed on the first ``--png-slices`` slices (default 1,000).

Usage: ``python benchmarks/ingest_speed.py [--slices 5000] [--hw 512] [--per-series 250] [--keep DIR]``;
``--smoke`` runs a tiny size (the test does).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ssl_lib.data.build import build_store  # noqa: E402
from ssl_lib.data.intensity import interval_map, to_hu  # noqa: E402
from ssl_lib.data.workers import available_cores  # noqa: E402

LIDC_SLICES = 244_527


def ct_stored(rng: np.random.Generator, hw: int) -> np.ndarray:
    """CT-like stored values (HU + 1024), int16: air, body, lungs, bone, noise."""
    yy, xx = np.mgrid[:hw, :hw] / hw - 0.5
    hu = np.full((hw, hw), -1000.0)
    hu[(xx / 0.42) ** 2 + (yy / 0.34) ** 2 < 1] = 40
    for cx in (-0.18, 0.18):
        hu[((xx - cx) / 0.14) ** 2 + (yy / 0.22) ** 2 < 1] = -850 + rng.uniform(-30, 30)
    hu[(xx / 0.05) ** 2 + ((yy - 0.25) / 0.05) ** 2 < 1] = 900
    hu += rng.normal(0, 20, hu.shape)
    return np.clip(hu + 1024, 0, 4095).astype(np.int16)


def write_tree(root: Path, slices: int, hw: int, per_series: int, seed: int = 0) -> int:
    """The synthetic LIDC tree; returns the number of slices written."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    base = [ct_stored(rng, hw) for _ in range(8)]
    n_series = max(1, -(-slices // per_series))
    written = 0
    for s in range(n_series):
        n = min(per_series, slices - written)
        folder = root / f"LIDC-IDRI-{s:04d}" / f"01-01-2000-{s}" / f"3000-{s}"
        folder.mkdir(parents=True)
        names = rng.permutation(n)
        study, series = generate_uid(), generate_uid()
        for k in range(n):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
            meta.MediaStorageSOPInstanceUID = generate_uid()
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.PatientID, ds.PatientName = "CT", f"LIDC-IDRI-{s:04d}", "anon"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.Manufacturer, ds.ManufacturerModelName, ds.KVP = "GE MEDICAL SYSTEMS", "LightSpeed16", 120
            ds.ConvolutionKernel, ds.PixelSpacing, ds.SliceThickness = "STANDARD", [0.7, 0.7], 2.5
            ds.ImagePositionPatient = [-180.0, -180.0, -2.5 * k]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.InstanceNumber = k + 1
            ds.Rows = ds.Columns = hw
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            ds.WindowCenter, ds.WindowWidth = -600, 1600
            img = np.roll(base[k % len(base)], k, axis=0)
            ds.PixelData = img.astype("<i2").tobytes()
            pydicom.dcmwrite(folder / f"1-{names[k]:03d}.dcm", ds, enforce_file_format=True)
        written += n
    return written


def png_pipeline(root: Path, out: Path, max_slices: int | None = None) -> int:
    """The authors' shape: per series read all, sort by z, HU, interval mapping, one PNG per slice.

    ``max_slices``: stop after the series that reaches it (the rate per slice is what is compared).
    """
    import pydicom
    from PIL import Image

    out.mkdir(parents=True)
    n = 0
    for patient in sorted(p for p in root.iterdir() if p.is_dir()):
        if max_slices is not None and n >= max_slices:
            break
        for folder, _, files in sorted(os.walk(patient)):
            dcm = sorted(f for f in files if f.endswith(".dcm"))
            if len(dcm) <= 10:
                continue
            slices = [pydicom.dcmread(Path(folder) / f) for f in dcm]
            slices.sort(key=lambda d: float(d.ImagePositionPatient[2]))
            for i, ds in enumerate(slices):
                hu = to_hu(ds.pixel_array, float(ds.RescaleSlope), float(ds.RescaleIntercept))
                Image.fromarray(interval_map(hu)).save(out / f"{patient.name}_{i}.png")
                n += 1
    return n


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=5000)
    parser.add_argument("--hw", type=int, default=512)
    parser.add_argument("--per-series", type=int, default=250)
    parser.add_argument("--png-slices", type=int, default=1000,
                        help="time the (slow) PNG pipeline on the first series up to this many slices")
    parser.add_argument("--smoke", action="store_true", help="tiny size (2 series of 12 slices of 32 x 32)")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.slices, args.hw, args.per_series = 24, 32, 12
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ingest-speed-"))
    try:
        tree = work / "LIDC-IDRI"
        t_write, n = timed(lambda: write_tree(tree, args.slices, args.hw, args.per_series))
        print(f"synthetic LIDC tree: {n} slices of {args.hw} x {args.hw} in {n // args.per_series or 1} series "
              f"(written in {t_write:.0f} s)", flush=True)
        t_png, n_png = timed(lambda: png_pipeline(tree, work / "png", args.png_slices))
        rates = {"png (authors' shape), 1 process": n_png / t_png}
        print(f"  png pipeline: {n_png / t_png:.1f} slices/s ({n_png} slices)", flush=True)
        for w in (1, 2):
            before = os.times()
            t, store = timed(lambda: build_store("lidc", tree, work / f"store{w}", size=args.hw, workers=w, salt="b"))
            after = os.times()
            cpu_main = after.user + after.system - before.user - before.system
            cpu_workers = (after.children_user + after.children_system - before.children_user - before.children_system)
            assert len(store) == n
            rates[f"store, {w} worker{'s' if w > 1 else ''}"] = n / t
            print(f"  store, {w} worker(s): {n / t:.1f} slices/s; CPU s: writer {cpu_main:.1f}, workers "
                  f"{cpu_workers:.1f}; cores busy {(cpu_main + cpu_workers) / t:.2f} of {available_cores()}", flush=True)
        a = (work / "store1" / "images.npy").read_bytes() == (work / "store2" / "images.npy").read_bytes()
        r_png, r1, r2 = rates.values()
        efficiency = r2 / (2 * r1)
        projected = LIDC_SLICES / (r1 * 16 * efficiency)
        print("\n| pipeline | slices/s | vs. png per core |\n|---|---:|---:|")
        for name, r in rates.items():
            cores = 2 if "2 workers" in name else 1
            print(f"| {name} | {r:.1f} | {r / cores / r_png:.2f}x |")
        print(f"\n2 workers vs 1: {r2 / r1:.2f}x (efficiency {efficiency:.0%}); store 1 worker vs png: {r1 / r_png:.2f}x; "
              f"stores identical for 1 and 2 workers: {a}")
        print(f"projected for LIDC-IDRI ({LIDC_SLICES:,} slices) on 16 cores at this efficiency: "
              f"{projected / 60:.1f} min (png pipeline, 1 process: {LIDC_SLICES / r_png / 3600:.1f} h); "
              f"this machine has {available_cores()} core(s) available")
        rates["identical"] = float(a)
        rates["projected_16_core_min"] = projected / 60
        return rates
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
