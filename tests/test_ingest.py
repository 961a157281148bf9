"""Build hygiene and ingest at scale: stale temp folders, 16-bit PNGs, DICOM decoded by worker processes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicom_files import write_ct
from ssl_lib.data.build import build_store, make_reader
from ssl_lib.data.store import write_store
from ssl_lib.data.readers import FolderReader, load_grey_image
from ssl_lib.data.store import StoreError, remove_stale_temp
from ssl_lib.data.workers import resolve_workers


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_build_removes_its_own_stale_temp_folders_only(tmp_path):
    host = socket.gethostname().replace("-", "_")
    stale = tmp_path / f".covid.tmp-{host}-{dead_pid()}-abc123"
    live = tmp_path / f".covid.tmp-{host}-{os.getpid()}-def456"  # a build still running (this process)
    other_store = tmp_path / f".lidc.tmp-{host}-{dead_pid()}-ghi789"
    other_host = tmp_path / f".covid.tmp-elsewhere-{dead_pid()}-jkl012"
    for d in (stale, live, other_store, other_host):
        d.mkdir()
        (d / "images.npy").write_bytes(b"half")
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(src / "a.png")
    Image.fromarray(np.ones((4, 4), np.uint8)).save(src / "b.png")
    (src / "labels.csv").write_text("file,label,split\na.png,0,train\nb.png,1,test\n")
    build_store("folder", src, tmp_path / "covid", size=4)
    assert not stale.exists() and live.exists() and other_store.exists() and other_host.exists()
    assert remove_stale_temp(tmp_path / "lidc") == [other_store.name]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".covid.tmp")) == sorted([live.name, other_host.name])


def sixteen_bit_png(path: Path, values) -> Path:
    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)
    return path


def test_sixteen_bit_png_is_an_error_or_a_stated_mapping(tmp_path):
    path = sixteen_bit_png(tmp_path / "ct16.png", [[0, 1024, 2048, 4095]])
    with pytest.raises(StoreError, match=r"ct16\.png: 16-bit grey image \(values 0\.\.4095\) would be darkened.*bits:12.*hu:1024"):
        load_grey_image(path)
    np.testing.assert_array_equal(load_grey_image(path, png16="bits:12"), [[0, 64, 128, 255]])
    # hu: value - 1024 is HU; the paper's interval -1024..3071 maps 0..4095 exactly onto 0..255
    np.testing.assert_array_equal(load_grey_image(path, png16="hu:1024"), [[0, 64, 128, 255]])
    # ... or the task's window (brain 35/80 HU: -5..75 HU)
    np.testing.assert_array_equal(load_grey_image(path, png16="hu:1024", window=(35, 80)), [[0, 16, 255, 255]])  # 0 HU: 5/80 of the way
    with pytest.raises(StoreError, match="values up to 4095, above 1023"):
        load_grey_image(path, png16="bits:10")
    with pytest.raises(ValueError, match="png16='nonsense'"):
        load_grey_image(path, png16="nonsense")
    # the folder reader passes it on; 8-bit images are untouched
    Image.fromarray(np.full((1, 4), 7, np.uint8)).save(tmp_path / "eight.png")
    (tmp_path / "labels.csv").write_text("file,label\nct16.png,1\neight.png,0\n")
    with pytest.raises(StoreError, match="16-bit"):
        list(FolderReader(tmp_path))
    recs = list(FolderReader(tmp_path, png16="bits:12"))
    np.testing.assert_array_equal(recs[0].pixels, [[0, 64, 128, 255]])
    np.testing.assert_array_equal(recs[1].pixels, [[7, 7, 7, 7]])
    reader = FolderReader(tmp_path, skip_bad=True)
    assert len(list(reader)) == 1 and reader.skipped.rows[0][0] == "ct16.png"


def lidc_tree(root: Path, n_series=3, n=12, hw=(24, 24)):
    rng = np.random.default_rng(0)
    for s in range(n_series):
        for k in range(n):
            write_ct(root / f"LIDC-IDRI-{s:04d}" / "st" / "se" / f"1-{k:03d}.dcm",
                     rng.integers(0, 2000, hw), z=float((7 * k) % n), instance=k + 1, patient_id=f"P{s}")
    return root


def test_workers_write_the_same_store_in_the_same_order(tmp_path):
    src = lidc_tree(tmp_path / "LIDC-IDRI")
    bad = src / "LIDC-IDRI-0001" / "st" / "se" / "1-005.dcm"
    bad.write_bytes(bad.read_bytes()[:400])  # truncated header: skipped and listed either way
    short = src / "LIDC-IDRI-0000" / "st" / "se" / "1-003.dcm"
    short.write_bytes(short.read_bytes()[:-300])  # header fine, pixel data short: found only when decoding
    one = build_store("lidc", src, tmp_path / "one", size=16, salt="k", workers=1, skip_bad=True)
    reader = make_reader("lidc", src, workers=2, skip_bad=True, salt="k")
    reader.target_size = 16
    two = write_store(reader, tmp_path / "two", size=16, name="two", salt="k", skipped=reader.skipped)
    assert reader._direct is not None  # the workers wrote the slices into images.npy themselves
    assert len(one) == 3 * 12 - 2 and len((tmp_path / "one" / "skipped.csv").read_text().splitlines()) == 3
    assert (tmp_path / "one" / "images.npy").read_bytes() == (tmp_path / "two" / "images.npy").read_bytes()
    assert (tmp_path / "one" / "manifest.csv").read_text() == (tmp_path / "two" / "manifest.csv").read_text()
    assert (tmp_path / "one" / "skipped.csv").read_text() == (tmp_path / "two" / "skipped.csv").read_text()
    assert one.meta["mean"] == two.meta["mean"] and one.meta["std"] == two.meta["std"]
    with pytest.raises(StoreError, match=r"1-003\.dcm: pixel data could not be decoded: transfer syntax Explicit VR "
                                         r"Little Endian \(1\.2\.840\.10008\.1\.2\.1\); .* probably truncated"):
        build_store("lidc", src, tmp_path / "three", size=16, workers=2)
    assert not (tmp_path / "three").exists() and not list(tmp_path.glob(".three.tmp-*"))


def test_resolve_workers():
    assert resolve_workers(3) == 3 and resolve_workers("auto", 10) == 1
    assert 1 <= resolve_workers("auto") <= (os.cpu_count() or 1)
    for bad in (0, "many", -2):
        with pytest.raises(ValueError, match="workers must be 'auto' or a positive integer"):
            resolve_workers(bad)


def test_lookup_table_mapping_is_the_float_formula_exactly():
    from ssl_lib.data.intensity import to_hu
    from ssl_lib.data.readers.dicom import hu_to_uint8, stored_to_uint8

    rng = np.random.default_rng(0)
    for dtype in (np.int16, np.uint16, np.uint8):
        info = np.iinfo(dtype)
        stored = rng.integers(info.min, info.max, (64, 64), endpoint=True).astype(dtype)
        for slope, intercept, window in ((1.0, -1024.0, None), (0.5, -1000.0, None), (2.5, -3.0, (35, 80)),
                                         (1.0, -1024.0, (40, 400))):
            want = hu_to_uint8(to_hu(stored, slope, intercept), window=window)
            np.testing.assert_array_equal(stored_to_uint8(stored, slope, intercept, window=window), want)
    floats = rng.normal(0, 500, (8, 8)).astype(np.float32)  # other dtypes take the float path
    np.testing.assert_array_equal(stored_to_uint8(floats, 1.0, 0.0), hu_to_uint8(to_hu(floats, 1.0, 0.0)))


def _native_threads(_):
    from threadpoolctl import threadpool_info

    import torch

    return max([p["num_threads"] for p in threadpool_info()] + [torch.get_num_threads()])


def test_ingest_pool_runs_every_native_thread_pool_single_threaded():
    """Decoding is single-threaded work: workers forked with thread pools sized for the machine ran
    2 workers slower than 1 process (benchmarks/ingest_speed.py). In the workers every native pool
    has one thread; this process's are left as they were."""
    import torch

    from ssl_lib.data.workers import OrderedPool

    torch.set_num_threads(2)
    try:
        with OrderedPool(2) as pool:
            assert list(pool.imap(_native_threads, [(i,) for i in range(4)])) == [1, 1, 1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
