"""DICOM decoding (modality LUT, windowing, MONOCHROME1, 16-bit, codecs) and the ``dicom`` source; no PHI leaks."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medcls.config import DataConfig
from medcls.data.dicom import decode_dicom, parse_window, patient_pseudonym, read_dicom
from medcls.data.images import read_image
from medcls.data.sources import load_data
from medcls.data.sources.dicom import dicom_source
from medcls.errors import ConfigError, DataError

PHI = {"name": "Doe^Jane", "id": "MRN-8675309", "birth": "19800101X"}  # birth date deliberately invalid (DA)


def write_dicom(path: Path, arr: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                slope: float | None = None, intercept: float | None = None, window: tuple[float, float] | None = None,
                patient_id: str | None = None, phi: bool = False, transfer_syntax: str | None = None,
                encapsulated: bytes | None = None, pixels: bool = True) -> Path:
    """A minimal Secondary Capture DICOM with uint16 (or encapsulated) pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 if arr.dtype == np.uint8 else 16
    stored = min(bits_stored, bits)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if phi:
        ds.PatientName = PHI["name"]
        ds.add_new(0x00100030, "DA", PHI["birth"])
    if patient_id is not None or phi:
        ds.PatientID = patient_id or PHI["id"]
    if pixels:
        if encapsulated is not None:
            ds.PixelData = encapsulate([encapsulated])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = np.ascontiguousarray(arr).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return path


def _ramp(h: int = 64, w: int = 64) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 4096).astype(np.uint16)  # 4096 distinct 12-bit values


JPEG_LS = "1.2.840.10008.1.2.4.80"  # no decoder plugin installed (pylibjpeg/gdcm/pyjpegls absent)


def _jpeg_ls_missing() -> bool:
    from pydicom.pixels import get_decoder

    return not get_decoder(JPEG_LS).is_available


# --- decoding ----------------------------------------------------------------------------------------------

def test_16_bit_precision_is_kept(tmp_path):
    img = read_dicom(write_dicom(tmp_path / "a.dcm", _ramp()))
    assert img.dtype == np.uint16 and img.shape == (64, 64)
    assert len(np.unique(img)) == 4096  # an 8-bit path would leave at most 256
    assert img.min() == 0 and img.max() == 65535
    assert np.all(np.diff(img.ravel()[:4096].astype(np.int64)) > 0)  # monotone in the stored values


def test_monochrome1_is_inverted(tmp_path):
    arr = _ramp()
    m2 = read_dicom(write_dicom(tmp_path / "m2.dcm", arr))
    m1 = read_dicom(write_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(m1.astype(np.int64), 65535 - m2.astype(np.int64))


def test_rescale_then_configured_window(tmp_path):
    stored = np.array([[0, 500], [1000, 1500]], dtype=np.uint16).repeat(4, 0).repeat(4, 1)
    p = write_dicom(tmp_path / "ct.dcm", stored, slope=2, intercept=-1000)  # -> -1000, 0, 1000, 2000
    img = read_dicom(p, window=(500, 1000))  # window [0, 1000] in rescaled units
    assert [int(img[0, 0]), int(img[0, 4]), int(img[4, 0]), int(img[4, 4])] == [0, 0, 65535, 65535]
    # without the rescale, 500 would have been mid-window
    q = write_dicom(tmp_path / "raw.dcm", stored)
    assert 30000 < int(read_dicom(q, window=(500, 1000))[0, 4]) < 35000


def test_window_from_file_and_override(tmp_path):
    arr = _ramp()
    p = write_dicom(tmp_path / "w.dcm", arr, window=(1000, 400))
    from_file = read_dicom(p)
    assert from_file[arr < 800].max() == 0 and from_file[arr > 1200].min() == 65535
    assert 0 < from_file[arr == 1000][0] < 65535
    full = read_dicom(p, window=(2047.5, 4096))  # a configured window replaces the file's
    assert len(np.unique(full)) == 4096
    no_window = read_dicom(write_dicom(tmp_path / "n.dcm", arr))
    assert len(np.unique(no_window)) == 4096  # full range when the file has none


def test_parse_window():
    assert parse_window("file") is None and parse_window(None) is None
    assert parse_window([40, 400]) == (40.0, 400.0)
    for bad in ([40], [40, 0], "soft", [40, "x"]):
        with pytest.raises(ConfigError, match=r"'file' .* \[centre, width\]"):
            parse_window(bad)


def test_jpeg2000_is_decoded_by_an_installed_handler(tmp_path, pneumonia_arrays):
    from PIL import Image, features

    if not features.check("jpg_2000"):
        pytest.skip("Pillow built without OpenJPEG")
    arr = pneumonia_arrays["train_images"][0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG2000", irreversible=False, no_jp2=True)
    p = write_dicom(tmp_path / "j2k.dcm", arr, bits_stored=8, transfer_syntax="1.2.840.10008.1.2.4.90",
                    encapsulated=buf.getvalue())
    img = read_dicom(p)
    assert img.dtype == np.uint16
    lo, hi = int(arr.min()), int(arr.max())
    np.testing.assert_array_equal(np.round(img / 65535 * (hi - lo) + lo).astype(np.uint8), arr)  # lossless


def test_missing_codec_names_file_syntax_and_packages(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    decoder = get_decoder(JPEG_LS)  # as without the 'dicom' extra: pydicom sorts its plugins once, at import
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {**decoder._unavailable,
                                                  "pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    assert _jpeg_ls_missing()
    p = write_dicom(tmp_path / "jls.dcm", _ramp(8, 8), transfer_syntax=JPEG_LS, encapsulated=b"\xff\xd8" + b"\0" * 64)
    with pytest.raises(DataError) as e:
        read_dicom(p)
    msg = str(e.value)
    for part in (str(p), "JPEG-LS Lossless", JPEG_LS, "python-gdcm", "pylibjpeg", "no installed pixel-data handler",
                 "pip install 'medcls[dicom]'"):
        assert part in msg


def test_unknown_transfer_syntax(tmp_path):
    p = write_dicom(tmp_path / "odd.dcm", _ramp(8, 8), transfer_syntax="1.2.3.4.5.6", encapsulated=b"\0" * 16)
    with pytest.raises(DataError, match=r"odd\.dcm.*1\.2\.3\.4\.5\.6"):
        read_dicom(p)


def test_no_pixel_data_and_not_dicom(tmp_path):
    p = write_dicom(tmp_path / "sr.dcm", _ramp(8, 8), pixels=False)
    with pytest.raises(DataError, match=r"sr\.dcm: DICOM file has no pixel data"):
        read_dicom(p)
    with pytest.raises(DataError, match=r"upload\.dcm: not a readable DICOM file \(InvalidDicomError\)"):
        decode_dicom(b"not a dicom file at all", "upload.dcm")


def test_io_sniffs_dicom_bytes(tmp_path):
    p = write_dicom(tmp_path / "noext", _ramp())
    np.testing.assert_array_equal(read_image(p), decode_dicom(p.read_bytes()))


# --- the source --------------------------------------------------------------------------------------------

def make_dicom_tree(root: Path, images: np.ndarray, *, n_patients: int = 8, per_patient: int = 3,
                    phi_every: int = 0) -> Path:
    """ROOT/{normal,pneumonia}/P<k>_<j>.dcm; patient k's images share a PatientID and a class."""
    for k in range(n_patients):
        cls = "pneumonia" if k % 2 else "normal"
        for j in range(per_patient):
            arr = images[k * per_patient + j].astype(np.uint16) * 16
            write_dicom(root / cls / f"P{k}_{j}.dcm", arr, patient_id=f"PID{k:04d}",
                        photometric="MONOCHROME1" if j == 1 else "MONOCHROME2",
                        phi=bool(phi_every) and k % phi_every == 0)
    return root


def test_folder_layout_groups_by_patient_hash(tmp_path, pneumonia_arrays):
    root = make_dicom_tree(tmp_path / "dcm", pneumonia_arrays["train_images"])
    src = dicom_source(str(root))
    t = src.splits["train"]
    assert src.spec.class_names == ("normal", "pneumonia") and src.spec.channels == 1
    assert len(t) == 24 and t.ids[0] == "normal/P0_0.dcm"
    assert len(set(t.groups)) == 8 and all(g.startswith("pt-") for g in t.groups)
    assert not any("PID" in g for g in t.groups)
    assert t.groups[0] == patient_pseudonym(b"PID0000")
    assert patient_pseudonym(b"PID0000", salt="site-secret") != t.groups[0]
    assert t.load(0).dtype == np.uint16
    assert any("PatientID" in n for n in src.notes)
    assert dicom_source(str(root), verify=False).splits["train"].groups.tolist() == t.groups.tolist()  # header reads
    assert dicom_source(str(root), group_by_patient=False).splits["train"].groups is None
    data = load_data(DataConfig(source=f"dicom:{root}", min_val_size=1, val_fraction=0.2, test_fraction=0.25))
    parts = [set(data.split(s).groups) for s in ("train", "val", "test")]
    assert all(len(p) > 0 for p in parts)
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])


def test_configured_window_reaches_the_table(tmp_path, pneumonia_arrays):
    root = make_dicom_tree(tmp_path / "dcm", pneumonia_arrays["train_images"], n_patients=2, per_patient=2)
    t = dicom_source(str(root), window=[1600, 800]).splits["train"]
    assert t.window == (1600.0, 800.0) and t.subset([1, 0]).window == (1600.0, 800.0)
    img, full = t.load(0), dicom_source(str(root)).splits["train"].load(0)
    assert (img == 0).mean() > (full == 0).mean() and (img == 65535).mean() > (full == 65535).mean()  # clipped
    with pytest.raises(ConfigError, match="data.options.window"):
        dicom_source(str(root), window=[1, -1])


def test_labels_csv_layout(tmp_path, pneumonia_arrays):
    x = pneumonia_arrays["train_images"]
    root = tmp_path / "study"
    rows = []
    for i in range(12):
        write_dicom(root / "files" / f"img{i}.dcm", x[i].astype(np.uint16), patient_id=f"PID{i // 2}")
        rows.append({"file": f"files/img{i}.dcm", "finding": ["normal", "effusion", "mass"][i % 3]})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    src = dicom_source(str(root), labels="labels.csv", path_col="file", label_col="finding")
    t = src.splits["train"]
    assert src.spec.task == "multiclass" and src.spec.class_names == ("effusion", "mass", "normal")
    assert t.ids[:2] == ["files/img0.dcm", "files/img1.dcm"] and len(set(t.groups)) == 6
    assert not any("no group_col" in n for n in src.notes)
    with pytest.raises(DataError, match="labels file 'nope.csv' not found"):
        dicom_source(str(root), labels="nope.csv")
    with pytest.raises(ConfigError, match="need options.labels"):
        dicom_source(str(root / "files"), label_cols=["a", "b"])


def test_unreadable_files_are_skipped_or_strict(tmp_path, pneumonia_arrays):
    root = make_dicom_tree(tmp_path / "dcm", pneumonia_arrays["train_images"], n_patients=2, per_patient=2)
    write_dicom(root / "normal" / "empty.dcm", _ramp(8, 8), pixels=False)
    with pytest.warns(UserWarning, match=r"1 of 5 DICOM file\(s\) cannot be used: .*empty\.dcm: DICOM file has no"):
        src = dicom_source(str(root))
    assert len(src.splits["train"]) == 4
    with pytest.raises(DataError, match=r"empty\.dcm"):
        dicom_source(str(root), strict=True)


def test_no_patient_ids_means_no_groups(tmp_path, pneumonia_arrays):
    x = pneumonia_arrays["train_images"]
    for i in range(6):
        write_dicom(tmp_path / "d" / ("a" if i % 2 else "b") / f"{i}.dcm", x[i].astype(np.uint16))
    src = dicom_source(str(tmp_path / "d"))
    assert src.splits["train"].groups is None
    assert any("no DICOM file has a PatientID" in n for n in src.notes)


# --- PHI -----------------------------------------------------------------------------------------------------

def test_patient_tags_never_reach_logs_output_or_files(tmp_path, pneumonia_arrays, caplog, capsys, recwarn):
    from medcls.cli.main import main

    caplog.set_level(logging.DEBUG)
    root = make_dicom_tree(tmp_path / "dcm", pneumonia_arrays["train_images"], n_patients=10, per_patient=2,
                           phi_every=1)
    broken = write_dicom(root / "normal" / "broken.dcm", _ramp(8, 8), phi=True, transfer_syntax=JPEG_LS,
                         encapsulated=b"\xff\xd8" + b"\0" * 64)
    nopix = write_dicom(root / "pneumonia" / "nopix.dcm", _ramp(8, 8), phi=True, pixels=False)
    caplog.clear()  # writing the fixtures warned about the invalid birth date; reading must not
    recwarn.clear()
    data = load_data(DataConfig(source=f"dicom:{root}", min_val_size=1, test_fraction=0.2, val_fraction=0.25))
    for s in ("train", "val", "test"):
        t = data.split(s)
        for i in range(len(t)):
            t.load(i)
    for p in (broken, nopix):
        with pytest.raises(DataError) as e:
            read_dicom(p)
        print(e.value)  # what a user would see
    out = tmp_path / "splits.csv"
    assert main(["data", "split", f"dicom:{root}", "--val", "0.2", "--test", "0.2", "-o", str(out)]) == 0
    seen = "\n".join([caplog.text, *(r.getMessage() for r in caplog.records), *(str(w.message) for w in recwarn),
                      *capsys.readouterr(), out.read_text(), "\n".join(data.notes),
                      repr([data.split(s).groups.tolist() for s in ("train", "val", "test")])])
    assert "broken.dcm" in seen and "pt-" in seen  # the checks below look at real output
    for value in (*PHI.values(), "Doe", "Jane", "8675309", "PID0"):
        assert value not in seen, f"PHI {value!r} leaked"


# --- end to end: split file, training, predict on a .dcm ---------------------------------------------------

@pytest.mark.slow
def test_split_train_and_predict_dicom(tmp_path, pneumonia_arrays, monkeypatch, capsys):
    from medcls.cli.main import main

    monkeypatch.chdir(tmp_path)
    root = make_dicom_tree(tmp_path / "dcm", pneumonia_arrays["train_images"], n_patients=20, per_patient=4)
    assert main(["data", "split", f"dicom:{root}", "--val", "0.2", "--test", "0.2", "-o", "splits.csv"]) == 0
    df = pd.read_csv("splits.csv")
    assert main(["train", "-s", f"data.source=dicom:{root}", "-s", "data.splits_file=splits.csv", "-s", "name=dcm",
                 "-s", "train.epochs=1", "-s", "train.batch_size=16", "-s", "model.stem=small",
                 "-s", "transforms.image_size=28", "-s",
                 "train.progress=false", "-s", "eval.n_bootstrap=0", "--no-evaluate"]) == 0
    out = capsys.readouterr().out
    run = next(Path("runs").iterdir())
    import json

    summary = json.loads((run / "data.json").read_text())["splits"]
    assert {s: summary[s]["n"] for s in ("train", "val", "test")} == {
        s: int((df["split"] == s).sum()) for s in ("train", "val", "test")}
    dcm = root / "pneumonia" / "P1_1.dcm"
    assert main(["predict", str(run), str(dcm)]) == 0
    out = capsys.readouterr().out
    assert "P1_1.dcm" in out and out.strip().splitlines()[-1].split("\t")[-2:] in (["normal", "n/a"], ["pneumonia", "n/a"])
