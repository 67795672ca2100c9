"""`medcls.validate` reads every kind of labelled source through the same path: an HDF5 file (PCam's class names,
mapped with a label map) and a DICOM tree (16-bit, another vendor's photometric interpretation)."""

from __future__ import annotations

import numpy as np
import pytest

from medcls.validation import validate_model


def test_an_hdf5_file_with_other_class_names(evaluated_run, pneumonia_arrays, tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "site.h5", "w") as f:
        f["x"] = pneumonia_arrays["test_images"][:80]
        f["y"] = pneumonia_arrays["test_labels"][:80, 0].astype(np.uint8)
    v = validate_model(evaluated_run.path, f"hdf5:{tmp_path / 'site.h5'}", label_map={"tumor": "pneumonia"},
                       n_bootstrap=20)
    assert v["n"] == 80 and v["source"]["label_mapping"] == {"normal": "normal", "tumor": "pneumonia"}
    assert set(v.frame["site_label"]) == {"normal", "tumor"} and set(v.frame["label"]) == {"normal", "pneumonia"}


def _dicom(path, arr, photometric):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "DX", *arr.shape, 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)


def test_a_dicom_tree_of_12_bit_images(evaluated_run, pneumonia_arrays, tmp_path):
    pytest.importorskip("pydicom")
    for i in range(40):
        img = pneumonia_arrays["test_images"][i].astype(np.uint16) * 16  # 12 bits stored
        mono1 = i % 4 == 1  # another vendor: MONOCHROME1, stored inverted
        cls = ("normal", "pneumonia")[int(pneumonia_arrays["test_labels"][i, 0])]
        _dicom(tmp_path / "dcm" / cls / f"{i}.dcm", 4095 - img if mono1 else img,
               "MONOCHROME1" if mono1 else "MONOCHROME2")
    v = validate_model(evaluated_run.path, f"dicom:{tmp_path / 'dcm'}", n_bootstrap=20)
    assert v["n"] == 40 and v["source"]["n_unreadable"] == 0
    here = v["case_mix"]["images_here"]
    dev = v["case_mix"]["images_development"]  # the same pictures as 8-bit arrays: 12 bits read to the same scale
    assert here["height"]["median"] == 28
    assert abs(here["intensity_mean"]["median"] - dev["intensity_mean"]["median"]) < 0.1  # not 16x darker
