"""DICOM files written from scratch for the reader and build tests (no downloads)."""

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct(path, stored, *, z=0.0, instance=1, slope=1.0, intercept=-1024.0, modality="CT", patient_id="LIDC-0001",
             patient_name="Doe^Jane", position=True, rescale=True, **extra):
    """A CT slice file built from scratch (int16 stored values ``stored``)."""
    stored = np.asarray(stored, dtype=np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyInstanceUID = extra.pop("study_uid", generate_uid())
    ds.SeriesInstanceUID = extra.pop("series_uid", generate_uid())
    for key, value in extra.items():
        setattr(ds, key, value)
    if position:
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceThickness = 1.0
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.astype("<i2").tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
