"""The ``btxrd`` source: dataset.xlsx (real column layout) + images/, metadata, centre split, bad labels."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from medcls.config import DataConfig
from medcls.data.sources import load_data
from medcls.data.sources.btxrd import btxrd_source
from medcls.errors import ConfigError, DataError
from medcls.testing.multimodal import write_btxrd_like


@pytest.fixture
def btxrd(tmp_path, pneumonia_arrays):
    path, kind = write_btxrd_like(tmp_path / "BTXRD", pneumonia_arrays["train_images"])
    return path.parent, kind


def test_labels_metadata_and_no_patient_warning(btxrd, caplog):
    root, kind = btxrd
    with caplog.at_level(logging.WARNING, logger="medcls"):
        src = btxrd_source(str(root))
    t = src.splits["train"]
    assert src.spec.class_names == ("normal", "benign", "malignant") and src.spec.task == "multiclass"
    assert src.splits["val"] is None and src.splits["test"] is None
    np.testing.assert_array_equal(t.labels, kind)
    assert t.groups is None and t.ids[4] == "IMG000005" and t.paths[4].name == "IMG000005.jpg"
    assert list(t.meta.columns) == ["center", "age", "gender", "site", "view"]
    assert t.meta.iloc[2].to_dict() == {"center": 1, "age": 12, "gender": "M", "site": "radius", "view": "frontal"}
    assert t.meta.iloc[1]["view"] == "lateral"
    assert "no patient ids" in caplog.text and any("no patient ids" in n for n in src.notes)
    sub = t.subset([7, 2])
    assert sub.meta["age"].tolist() == [17, 12] and sub.ids == ["IMG000008", "IMG000003"]
    assert src.spec.extra["metadata"] == ["center", "age", "gender", "site", "view"]


def test_metadata_follows_samples_through_load_data(btxrd):
    root, _ = btxrd
    data = load_data(DataConfig(source=f"btxrd:{root}", min_val_size=1))
    for s in ("train", "val", "test"):
        t = data.split(s)
        assert len(t.meta) == len(t)
        assert [f"IMG{int(a) - 10 + 1:06d}" for a in t.meta["age"]] == t.ids  # age encodes the row here


def test_center_split_is_external_validation(btxrd):
    root, _ = btxrd
    src = btxrd_source(str(root), split="center")
    assert set(src.splits["train"].meta["center"]) == {1} and set(src.splits["test"].meta["center"]) == {2, 3}
    assert any("external validation" in n for n in src.notes)
    data = load_data(DataConfig(source=f"btxrd:{root}", options={"split": "center"}, min_val_size=1,
                                val_fraction=0.2))
    assert set(data.val.meta["center"]) == {1} and set(data.train.meta["center"]) == {1}
    assert set(data.test.meta["center"]) == {2, 3} and len(data.test) == len(src.splits["test"])
    assert set(data.val.labels.tolist()) == {0, 1, 2}  # stratified from centre 1
    only3 = btxrd_source(str(root), split="center", test_centers=[3])
    assert set(only3.splits["test"].meta["center"]) == {3}
    with pytest.raises(ConfigError, match=r"test_centers \[4\] must be some, not all, of the centres .*1, 2, 3"):
        btxrd_source(str(root), split="center", test_centers=[4])
    with pytest.raises(ConfigError, match="split must be 'random' or 'center'"):
        btxrd_source(str(root), split="centre")


def test_missing_label_column(tmp_path, pneumonia_arrays):
    path, _ = write_btxrd_like(tmp_path / "B", pneumonia_arrays["train_images"], n=10,
                         edit=lambda df: df.drop(columns=["malignant"]))
    with pytest.raises(DataError, match=r"B/dataset\.xlsx: missing BTXRD column\(s\) 'malignant'"):
        btxrd_source(str(path.parent))


def test_row_with_two_classes_names_file_and_row(tmp_path, pneumonia_arrays):
    def both(df):
        df.loc[3, ["tumor", "benign", "malignant"]] = 1  # spreadsheet row 5
        return df

    path, _ = write_btxrd_like(tmp_path / "B", pneumonia_arrays["train_images"], n=10, edit=both)
    with pytest.raises(DataError, match=r"dataset\.xlsx: row\(s\) 5 set both benign and malignant"):
        btxrd_source(str(path))  # the xlsx path itself is accepted too


def test_tumor_flag_must_agree(tmp_path, pneumonia_arrays):
    def odd(df):
        df.loc[0, "tumor"] = 1  # row 2 is normal (neither benign nor malignant)
        return df

    path, _ = write_btxrd_like(tmp_path / "B", pneumonia_arrays["train_images"], n=10, edit=odd)
    with pytest.raises(DataError, match=r"dataset\.xlsx: row\(s\) 2 disagree"):
        btxrd_source(str(path.parent))


def test_missing_layout(tmp_path):
    with pytest.raises(DataError, match="dataset.xlsx not found"):
        btxrd_source(str(tmp_path))
    (tmp_path / "dataset.xlsx").write_bytes(b"")
    with pytest.raises(DataError, match="image folder .*images not found"):
        btxrd_source(str(tmp_path))


def test_data_split_by_center_and_patient_errors(btxrd, tmp_path, capsys):
    from medcls.cli.main import main

    root, _ = btxrd
    out = tmp_path / "splits.csv"
    assert main(["data", "split", str(root), "--by", "center", "--val", "0.2", "-o", str(out)]) == 0
    df = pd.read_csv(out)
    t = btxrd_source(str(root)).splits["train"]
    meta = t.meta.set_axis(t.ids)
    centers = meta.loc[df["id"], "center"].to_numpy()
    assert set(centers[df["split"] == "test"]) == {2, 3} and set(centers[df["split"] != "test"]) == {1}
    assert (df["split"] == "val").sum() > 0
    printed = capsys.readouterr()
    assert "test = centre(s) 2, 3" in printed.err and "malignant" in printed.out
    assert main(["data", "split", f"btxrd:{root}", "-o", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "'person(\\d+)_' matches none of the 60 file names (e.g. 'IMG000001', 'IMG000002', 'IMG000003')" in err
    assert "--by none" in err
    assert main(["data", "split", f"btxrd:{root}", "--by", "none", "-o", str(tmp_path / "n.csv")]) == 0


def test_manifest_is_read_once(btxrd, monkeypatch):
    """btxrd checks labels and metadata on the same table csv_source turns into samples: one read of the xlsx."""
    import medcls.data.sources.manifest as manifest

    calls = []
    real = manifest.read_manifest
    monkeypatch.setattr(manifest, "read_manifest", lambda *a, **k: calls.append(a) or real(*a, **k))
    btxrd_source(str(btxrd[0]))
    assert len(calls) == 1


def test_table_is_not_a_config_option(btxrd):
    with pytest.raises(ConfigError, match="not an option") as e:
        load_data(DataConfig(source=f"csv:{btxrd[0] / 'dataset.xlsx'}", options={"table": "x.csv"}))
    assert "table" not in str(e.value).split("Options:")[1]
