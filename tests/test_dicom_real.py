"""Real DICOM as scanners write it (pydicom-data's files): compressed transfer syntaxes, enhanced CT."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from dicom_files import write_ct
from ssl_lib.data.build import build_store
from ssl_lib.data.intensity import interval_map
from ssl_lib.data.readers import FolderReader, LidcReader
from ssl_lib.data.readers.dicom import (decoder_help, frames_of, read_ct_slice, read_ct_slices, read_dicom,
                                        stored_frames)
from ssl_lib.data.store import StoreError

# pydicom-data (pinned in requirements-dev.txt) provides these real files offline, via pydicom.data


def reference(ds) -> np.ndarray:
    """pydicom's own modality LUT of the (single) frame, then the paper's interval mapping."""
    return interval_map(apply_modality_lut(ds.pixel_array, ds))


def as_ct(name: str, tmp_path: Path, slope=1.0, intercept=-1024.0) -> Path:
    """A pydicom test file (MR/NM/US) re-labelled CT with rescale tags; its compressed pixel data untouched."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.Modality = "CT"
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    out = tmp_path / name
    ds.save_as(out)
    return out


@pytest.mark.parametrize("name", ["693_J2KR.dcm", "693_J2KI.dcm", "bad_sequence.dcm", "explicit_VR-UN.dcm"])
def test_compressed_ct_decodes_to_pydicom_hu(name):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID.is_compressed and ds.Modality == "CT"
    pixels, _ = read_ct_slice(path)
    assert np.count_nonzero(pixels != reference(ds)) == 0


@pytest.mark.parametrize("name,syntax", [("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless"),
                                          ("MR_small_RLE.dcm", "RLE Lossless"),
                                          ("MR_small_jp2klossless.dcm", "JPEG 2000"),
                                          ("JPGExtended.dcm", "JPEG Extended"),
                                          ("JPEG-LL.dcm", "JPEG Lossless")])
def test_every_compression_decodes_to_pydicom_hu(tmp_path, name, syntax):
    path = as_ct(name, tmp_path)
    ds = pydicom.dcmread(path)
    assert syntax in ds.file_meta.TransferSyntaxUID.name
    pixels, _ = read_ct_slice(path)
    assert np.count_nonzero(pixels != reference(ds)) == 0
    if name in ("MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
        # lossless: the same HU as the uncompressed original
        plain = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        np.testing.assert_array_equal(ds.pixel_array, plain.pixel_array)


def test_enhanced_ct_split_into_frames_along_the_normal():
    path = get_testdata_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == 2 and "RescaleSlope" not in ds  # the tags sit in the functional groups
    frames = frames_of(ds, path)
    assert [(f.slope, f.intercept) for f in frames] == [(1.0, -1024.0)] * 2
    # IOP (-1,0,0,0,1,0): the normal is -z, so the frame at z = -149 comes first
    assert [f.position for f in frames] == [159.0, 149.0]
    slices, _ = read_ct_slices(path)
    pvt = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    expected = [interval_map(apply_modality_lut(ds.pixel_array[k], pvt)) for k in (1, 0)]
    assert len(slices) == 2
    for got, want in zip(slices, expected):
        assert np.count_nonzero(got != want) == 0
    assert not np.array_equal(slices[0], slices[1])


def test_enhanced_ct_in_a_lidc_series_and_a_folder(tmp_path):
    series = tmp_path / "LIDC-IDRI" / "LIDC-IDRI-0001" / "study" / "series"
    series.mkdir(parents=True)
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    per_frame = ds.PerFrameFunctionalGroupsSequence
    for k in range(11):  # eleven 2-frame files: 22 images, positions interleaved across files
        for j, item in enumerate(per_frame):
            item.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, -float(2 * (10 - k) + j)]
        ds.save_as(series / f"{k:02d}.dcm")
    reader = LidcReader(tmp_path, min_series_images=10)
    recs = list(reader)
    assert len(recs) == 22 and reader.counts["multi_frame_files"] == 11
    assert all(reader.summary()["options"]["pixel_plugins"].values())  # the pinned decoders import
    # normal -z: the largest -z (z = 0, file 10 frame 0) first ... ordered along the normal
    first = read_ct_slices(series / "10.dcm")[0]
    np.testing.assert_array_equal(recs[0].pixels, first[0])
    (tmp_path / "f").mkdir()
    shutil.copy(get_testdata_file("eCT_Supplemental.dcm"), tmp_path / "f" / "e.dcm")
    (tmp_path / "f" / "labels.csv").write_text("file,label\ne.dcm,1\n")
    recs = list(FolderReader(tmp_path / "f", window=None))
    assert len(recs) == 2 and [r.label for r in recs] == [1, 1] and recs[0].source.endswith(":f0000")


def test_undecodable_transfer_syntax_names_file_syntax_and_fix(tmp_path, monkeypatch):
    # MPEG-2 video: no pixel-data decoder in pydicom
    path = tmp_path / "x.dcm"
    write_ct(path, np.zeros((8, 8)))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 10])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(StoreError) as info:
        read_ct_slice(path)
    msg = str(info.value)
    assert str(path) in msg and f"{pydicom.uid.MPEG2MPML.name} (1.2.840.10008.1.2.4.100)" in msg and "gdcmconv" in msg
    # a plugin missing: JPEG-LS needs pylibjpeg + libjpeg here; without them pydicom's own list is quoted
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    decoder = get_decoder(JPEGLSLossless)
    monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
    assert "install one of these pixel-data plugins" in decoder_help(JPEGLSLossless)
    assert "pyjpegls" in decoder_help(JPEGLSLossless)


def test_garbled_compressed_pixel_data_says_corrupt(tmp_path):
    path = as_ct("MR_small_jpeg_ls_lossless.dcm", tmp_path)
    ds = pydicom.dcmread(path)
    garbage = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xf7" + garbage])
    ds.save_as(path)
    with pytest.raises(StoreError, match=r"pixel data could not be decoded: transfer syntax JPEG-LS Lossless Image "
                                         r"Compression \(1\.2\.840\.10008\.1\.2\.4\.80\); the installed decoder"):
        stored_frames(read_dicom(path), path)


def test_enhanced_ct_is_decoded_once_per_file(tmp_path, monkeypatch):
    """Every frame of a multi-frame file comes from one decode of its pixel data (not one per frame)."""
    import ssl_lib.data.readers.dicom as dicom
    import ssl_lib.data.readers.lidc as lidc

    series = tmp_path / "LIDC-IDRI" / "LIDC-IDRI-0001" / "study" / "series"
    series.mkdir(parents=True)
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    for k in range(6):  # six 2-frame files, frames interleaved along the normal across files
        for j, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            item.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, -float(2 * (5 - k) + j)]
        ds.save_as(series / f"{k:02d}.dcm")
    write_ct(series / "single.dcm", np.full((ds.Rows, ds.Columns), 1024, np.int16), z=-50.0)
    calls = []
    real = dicom.stored_frames
    spy = lambda d, p: calls.append(str(p)) or real(d, p)  # noqa: E731
    monkeypatch.setattr(dicom, "stored_frames", spy)
    monkeypatch.setattr(lidc, "stored_frames", spy)
    recs = list(LidcReader(tmp_path, min_series_images=10, workers=1))
    assert len(recs) == 13
    assert sorted(calls) == sorted(str(series / f"{k:02d}.dcm") for k in range(6)) + [str(series / "single.dcm")]
    expected = [s.tobytes() for k in range(6) for s in read_ct_slices(series / f"{k:02d}.dcm")[0]]
    expected.append(read_ct_slice(series / "single.dcm")[0].tobytes())
    assert sorted(r.pixels.tobytes() for r in recs) == sorted(expected)  # the same slices as decoding per file
