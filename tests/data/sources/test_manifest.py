"""The ``csv`` source: CSV/TSV/Excel manifests in the BTXRD and patient-id layouts."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medcls.config import DataConfig
from medcls.data.sources import load_data
from medcls.data.sources.manifest import csv_source
from medcls.errors import ConfigError, DataError

NPZ = Path("/work/shared/data/medmnist/pneumoniamnist.npz")
SITES = ["hand", "ulna", "radius", "humerus", "foot", "tibia", "fibula", "femur", "hip bone", "ankle-joint",
         "knee-joint", "hip-joint", "wrist-joint", "elbow-joint", "shoulder-joint"]


@functools.lru_cache(maxsize=1)
def _images() -> np.ndarray:
    if not NPZ.is_file():
        pytest.skip(f"{NPZ} not available")
    with np.load(NPZ) as z:
        return z["train_images"][:60]


def _save(img: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def make_btxrd(root: Path, n: int = 24) -> tuple[Path, np.ndarray]:
    """BTXRD/images/IMG000001.jpeg ... + BTXRD/dataset.xlsx (Sheet1) with one-hot labels.

    Returns the manifest path and the expected class index per row (0 normal, 1 benign, 2 malignant).
    """
    x = _images()
    kind = np.array([i % 3 for i in range(n)])  # 0 normal, 1 benign, 2 malignant
    rows = []
    for i in range(n):
        image_id = f"IMG{i + 1:06d}"
        _save(x[i], root / "images" / f"{image_id}{'.jpg' if i % 7 == 3 else '.jpeg'}")  # a few .jpg, as in BTXRD
        row = {"image_id": image_id, "center": 1 + i % 3, "age": 20 + i, "gender": "MF"[i % 2]}
        row.update({s: int(j == i % len(SITES)) for j, s in enumerate(SITES)})
        row.update({"tumor": int(kind[i] > 0), "benign": int(kind[i] == 1), "malignant": int(kind[i] == 2)})
        row.update({"frontal": 1, "lateral": 0, "oblique": 0})
        rows.append(row)
    path = root / "dataset.xlsx"
    pd.DataFrame(rows).to_excel(path, sheet_name="Sheet1", index=False)
    return path, kind


def make_patient_csv(root: Path, n_patients: int = 12, per_patient: int = 3) -> Path:
    """labels.csv with path, finding and patient_id; images in scans/<patient>/."""
    x = _images()
    rows = []
    for p in range(n_patients):
        for j in range(per_patient):
            rel = f"scans/P{p:03d}/view{j}.png"
            _save(x[p * per_patient + j], root / rel)
            rows.append({"file": rel, "finding": "pneumonia" if p % 2 else "normal", "patient_id": f"P{p:03d}"})
    path = root / "labels.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_btxrd_xlsx_one_hot(tmp_path):
    path, kind = make_btxrd(tmp_path / "BTXRD")
    opts = {"path_col": "image_id", "label_cols": ["benign", "malignant"], "image_root": "images"}
    src = csv_source(str(path), **opts)
    assert src.spec.task == "multiclass"
    assert src.spec.class_names == ("normal", "benign", "malignant")
    train = src.splits["train"]
    assert len(train) == 24 and train.groups is None
    np.testing.assert_array_equal(train.labels, kind)
    assert train.paths[3].suffix == ".jpg" and train.paths[0].name == "IMG000001.jpeg"
    assert train.load(0).shape == (28, 28)
    assert any("no group_col" in n for n in src.notes)
    data = load_data(DataConfig(source=f"csv:{path}", options=opts, min_val_size=1))
    assert len(data.train) + len(data.val) + len(data.test) == 24


def test_btxrd_classes_reorder_and_tumor_column(tmp_path):
    path, kind = make_btxrd(tmp_path / "BTXRD")
    src = csv_source(str(path), path_col="image_id", label_cols=["benign", "malignant"], image_root="images",
                     classes=["malignant", "benign", "normal"])
    np.testing.assert_array_equal(src.splits["train"].labels, np.array([2, 1, 0])[kind])
    with pytest.raises(DataError, match=r"unknown: \['benin'\]\. Did you mean 'benign'\?; missing: \['benign'\]"):
        csv_source(str(path), path_col="image_id", label_cols=["benign", "malignant"], image_root="images",
                   classes=["malignant", "benin", "normal"])
    src = csv_source(str(path), path_col="image_id", label_cols=["tumor"], image_root="images", sheet="Sheet1")
    assert src.spec.task == "binary" and src.spec.class_names == ("normal", "tumor")
    assert src.spec.positive_index == 1


def test_two_labels_set_is_an_error_unless_multilabel(tmp_path):
    path, _ = make_btxrd(tmp_path / "BTXRD")
    opts = {"path_col": "image_id", "image_root": "images", "label_cols": ["tumor", "benign", "malignant"]}
    with pytest.raises(DataError, match=r"row\(s\) 3, 4, 6, 7.*more than one of the label columns.*multilabel=true"):
        csv_source(str(path), **opts)
    src = csv_source(str(path), multilabel=True, **opts)
    assert src.spec.task == "multilabel"
    assert src.spec.class_names == ("tumor", "benign", "malignant")
    labels = src.splits["train"].labels
    assert labels.dtype == np.float32 and labels.shape == (24, 3)
    np.testing.assert_array_equal(labels[:3], [[0, 0, 0], [1, 1, 0], [1, 0, 1]])


def test_patient_csv_split_by_group(tmp_path, monkeypatch):
    make_patient_csv(tmp_path)
    monkeypatch.chdir(tmp_path)
    path = Path("labels.csv")  # a relative manifest path: images are relative to its folder
    opts = {"path_col": "file", "label_col": "finding", "group_col": "patient_id"}
    data = load_data(DataConfig(source=f"csv:{path}", options=opts, min_val_size=1, test_fraction=0.25,
                                val_fraction=0.2))
    assert data.spec.class_names == ("normal", "pneumonia")
    parts = [set(t.groups) for t in (data.train, data.val, data.test)]
    assert all(len(p) > 0 for p in parts)
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    assert sum(len(t) for t in (data.train, data.val, data.test)) == 36
    assert data.train.paths[0].is_absolute()


def test_split_column_tsv_and_int_labels(tmp_path):
    x = _images()
    rows = []
    for i in range(12):
        _save(x[i], tmp_path / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": i % 2, "split": ["train", "train", "Valid", "test"][i % 4]})
    path = tmp_path / "labels.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    src = csv_source(str(path), split_col="split")
    assert {s: len(t) for s, t in src.splits.items()} == {"train": 6, "val": 3, "test": 3}
    assert src.spec.class_names == ("0", "1")
    src = csv_source(str(path), classes=["normal", "pneumonia"])  # ints index the given classes
    assert src.spec.class_names == ("normal", "pneumonia")
    np.testing.assert_array_equal(src.splits["train"].labels, np.arange(12) % 2)


def test_unknown_label_lists_values_and_rows(tmp_path):
    path = make_patient_csv(tmp_path, n_patients=4, per_patient=1)
    df = pd.read_csv(path)
    df.loc[[1, 3], "finding"] = ["pneumonai", "covid"]
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"unknown label\(s\) 'covid', 'pneumonai'.*row\(s\) 3, 5\). 'pneumonai': Did you mean 'pneumonia'\?"
                                        r" Expected one of the classes: normal, pneumonia"):
        csv_source(str(path), path_col="file", label_col="finding", classes=["normal", "pneumonia"])


def test_missing_columns_did_you_mean(tmp_path):
    path = make_patient_csv(tmp_path, n_patients=2, per_patient=1)
    with pytest.raises(DataError, match=r"missing column\(s\) 'path' \(option path_col\).*'label' \(option label_col\)"
                                        r".*Columns: file, finding, patient_id"):
        csv_source(str(path))
    with pytest.raises(DataError, match=r"'patientid' \(option group_col\) Did you mean 'patient_id'\?"):
        csv_source(str(path), path_col="file", label_col="finding", group_col="patientid")


def test_missing_and_empty_manifest(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        csv_source(str(tmp_path / "nope.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        csv_source(str(tmp_path / "empty.csv"))
    (tmp_path / "header.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="no rows"):
        csv_source(str(tmp_path / "header.csv"))
    (tmp_path / "labels.json").write_text("{}")
    with pytest.raises(DataError, match=r"must be a \.csv, \.tsv or \.xlsx"):
        csv_source(str(tmp_path / "labels.json"))


def test_unknown_sheet(tmp_path):
    path, _ = make_btxrd(tmp_path / "BTXRD", n=3)
    with pytest.raises(DataError, match=r"no sheet 'Sheet 1'\. Did you mean 'Sheet1'\?"):
        csv_source(str(path), sheet="Sheet 1", path_col="image_id", label_cols=["tumor"])


def test_missing_image_paths(tmp_path):
    path = make_patient_csv(tmp_path, n_patients=4, per_patient=2)
    (tmp_path / "scans" / "P001" / "view0.png").unlink()
    with pytest.warns(UserWarning, match=r"1 of 8 image\(s\) not found.*scans/P001/view0\.png \(row\(s\) 4\)"):
        src = csv_source(str(path), path_col="file", label_col="finding")
    assert len(src.splits["train"]) == 7
    with pytest.raises(DataError, match="not found"):
        csv_source(str(path), path_col="file", label_col="finding", strict=True)
    with pytest.raises(DataError, match=r"none of the 8 image paths exist.*image_root"):
        csv_source(str(path), path_col="file", label_col="finding", image_root=str(tmp_path / "scans"))


def test_image_ext_option(tmp_path):
    path, _ = make_btxrd(tmp_path / "BTXRD", n=6)
    with pytest.warns(UserWarning, match=r"1 of 6 image\(s\) not found.*IMG000004"):  # IMG000004 is a .jpg
        src = csv_source(str(path), path_col="image_id", label_cols=["tumor"], image_root="images", image_ext="jpeg")
    assert len(src.splits["train"]) == 5


def test_corrupt_images_warn_or_raise(tmp_path):
    path = make_patient_csv(tmp_path, n_patients=4, per_patient=2)
    (tmp_path / "scans" / "P002" / "view1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.warns(UserWarning, match=r"1 of 8 image\(s\) cannot be read.*view1\.png"):
        src = csv_source(str(path), path_col="file", label_col="finding")
    assert len(src.splits["train"]) == 7
    with pytest.raises(DataError, match="cannot be read"):
        csv_source(str(path), path_col="file", label_col="finding", strict=True)


def test_bad_option_values(tmp_path):
    path = make_patient_csv(tmp_path, n_patients=2, per_patient=1)
    with pytest.raises(ConfigError, match=r"multilabel=true needs options\.label_cols"):
        csv_source(str(path), path_col="file", label_col="finding", multilabel=True)
    with pytest.raises(ConfigError, match="non-empty list"):
        csv_source(str(path), path_col="file", label_cols="finding")
    with pytest.raises(ConfigError, match=r"data\.options\.label_column.*Did you mean 'label_col'"):
        load_data(DataConfig(source=f"csv:{path}", options={"label_column": "finding"}))
