"""Image bytes the service tests upload."""

from __future__ import annotations

import io

import numpy as np


def dicom_bytes(arr: np.ndarray, photometric: str = "MONOCHROME1", *, deflated: bool = False) -> bytes:
    """A Secondary Capture DICOM of ``arr`` (12 bits stored), with patient tags that must never be logged."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "Doe^Jane", "SECRET-ID-123"
    ds.set_pixel_data(arr.astype(np.uint16), photometric_interpretation=photometric, bits_stored=12)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
