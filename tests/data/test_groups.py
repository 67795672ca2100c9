"""Patient ids, three-way group splits (property-tested), ``medcls data split`` and ``data.splits_file``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from medcls.config import DataConfig
from medcls.data.groups import groups_from_regex, patient_groups
from medcls.data.resplit import split_source
from medcls.data.sources import load_data
from medcls.data.splits import assign_splits, center_splits
from medcls.errors import ConfigError, DataError

# --- patient ids ---------------------------------------------------------------------------------------------


def test_kaggle_names_and_custom_regex():
    names = ["train/PNEUMONIA/person12_bacteria_3.jpeg", "train/NORMAL/NORMAL2-IM-0001-0001.jpeg", "odd.png"]
    groups, matched = patient_groups(names)
    assert groups.tolist() == ["person12", "IM-0001", "file:odd.png"] and matched == 2
    assert groups_from_regex(["a/sub-007_t1.png", "sub-007_t2.png"], r"sub-(\d+)_").tolist() == ["007", "007"]
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        patient_groups(names, "person(")


def test_regex_matching_nothing_names_it_and_three_files():
    with pytest.raises(DataError, match=r"--patient-regex 'case\(\\d\+\)' matches none of the 4 file names "
                                        r"\(e\.g\. 'a\.png', 'b\.png', 'c\.png'\)"):
        groups_from_regex(["x/a.png", "x/b.png", "c.png", "d.png"], r"case(\d+)")


# --- splitting -----------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_groups=st.integers(10, 40), n_classes=st.integers(2, 4),
       val=st.floats(0.05, 0.3), test=st.floats(0.05, 0.3), stratify=st.booleans(), seed=st.integers(0, 99))
def test_group_split_property(data, n_groups, n_classes, val, test, stratify, seed):
    sizes = data.draw(st.lists(st.integers(1, 5), min_size=n_groups, max_size=n_groups))
    group_label = data.draw(st.lists(st.integers(0, n_classes - 1), min_size=n_groups, max_size=n_groups))
    mixed = data.draw(st.booleans())  # patients whose images carry different labels
    groups = np.repeat([f"p{g}" for g in range(n_groups)], sizes)
    labels = np.repeat(group_label, sizes)
    if mixed:
        labels = (labels + np.arange(len(labels)) % 2) % n_classes
    split = assign_splits(labels, val=val, test=test, groups=groups, stratify=stratify, seed=seed)
    assert len(split) == len(labels) and set(split) <= {"train", "val", "test"}  # every sample assigned once
    for s in ("train", "val", "test"):
        assert (split == s).any(), f"{s} is empty"
    owner = {}
    for g, s in zip(groups, split, strict=True):
        assert owner.setdefault(g, s) == s, f"group {g} is in {owner[g]} and {s}"


def test_fractions_and_stratification_without_groups():
    labels = np.array([0] * 160 + [1] * 40)
    split = assign_splits(labels, val=0.1, test=0.2, seed=0)
    counts = {s: np.bincount(labels[split == s], minlength=2).tolist() for s in ("train", "val", "test")}
    assert counts == {"train": [112, 28], "val": [16, 4], "test": [32, 8]}
    with pytest.raises(DataError, match="val \\+ test fractions must leave some training data"):
        assign_splits(labels, val=0.5, test=0.5)


def test_center_split():
    labels = np.arange(30) % 2
    centers = [1] * 20 + [2.0] * 6 + ["3"] * 4
    split = center_splits(labels, centers, test_centers=[2, 3], val=0.2)
    assert (split[20:] == "test").all() and (split[:20] != "test").all() and (split[:20] == "val").sum() == 4
    with pytest.raises(DataError, match=r"test centres \['1', '2', '3'\] hold every sample"):
        center_splits(labels, centers, test_centers=[1, 2, 3], val=0.2)
    with pytest.raises(DataError, match=r"test centres \['9'\] are not all among the centres of the data \(1, 2, 3\)"):
        center_splits(labels, centers, test_centers=[9], val=0.2)


# --- a Kaggle-style folder, `medcls data split` and data.splits_file -------------------------------------------


def make_kaggle(root: Path, images: np.ndarray, *, n_patients: int = 24) -> Path:
    """chest_xray/{train,test}/{NORMAL,PNEUMONIA}/ with patient-coded names (2-3 images per patient)."""
    k = 0
    for p in range(n_patients):
        split = "test" if p % 6 in (4, 5) else "train"
        for j in range(2 + p % 2):
            if p % 2:
                rel = f"{split}/PNEUMONIA/person{p}_{'bacteria' if j else 'virus'}_{k}.jpeg"
            else:
                rel = f"{split}/NORMAL/NORMAL2-IM-{p:04d}-{j + 1:04d}.jpeg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[k]).save(root / rel)
            k += 1
    return root


@pytest.fixture
def kaggle(tmp_path, pneumonia_arrays):
    return make_kaggle(tmp_path / "chest_xray", pneumonia_arrays["train_images"])


def _check_disjoint(df: pd.DataFrame) -> None:
    owners = df.groupby("group")["split"].nunique()
    assert (owners == 1).all(), owners[owners > 1]


def test_cli_split_writes_groups_counts_and_refuses_overwrite(kaggle, tmp_path, capsys):
    from medcls.cli.main import main

    out = tmp_path / "splits.csv"
    args = ["data", "split", f"folder:{kaggle}", "--by", "patient", "--val", "0.15", "--test", "0.2", "--stratify",
            "-o", str(out)]
    assert main(args) == 0
    df = pd.read_csv(out, dtype=str)
    assert list(df.columns) == ["id", "split", "label", "group"] and len(df) == 60
    assert set(df["split"]) == {"train", "val", "test"}
    assert df.loc[df["id"].str.contains("person1_"), "group"].unique().tolist() == ["person1"]
    _check_disjoint(df)
    printed = capsys.readouterr().out
    for s in ("train", "val", "test"):
        part = df[df["split"] == s]
        assert str(part["group"].nunique()) in printed and str(len(part)) in printed
    assert "NORMAL" in printed and "PNEUMONIA" in printed
    before = out.read_text()
    assert main(args) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == before
    assert main([*args, "--seed", "3", "--force"]) == 0
    assert out.read_text() != before


def test_splits_file_drives_load_data(kaggle, tmp_path):
    out = tmp_path / "splits.csv"
    df, notes = split_source(f"folder:{kaggle}", val=0.2, test=0.2, seed=1)
    df.to_csv(out, index=False)
    data = load_data(DataConfig(source=f"folder:{kaggle}", splits_file=str(out)))
    for s in ("train", "val", "test"):
        assert sorted(data.split(s).ids) == sorted(df.loc[df["split"] == s, "id"])
    assert any(str(out) in n for n in data.notes)
    assert any("groups: the source's patient ids" in n for n in notes)
    kept, _ = split_source(f"folder:{kaggle}", val=0.2, keep_test=True)
    assert set(kept.loc[kept["split"] == "test", "id"]) == {i for i in kept["id"] if i.startswith("test/")}

    bad = df.copy()
    bad.loc[0, "id"] = "train/NORMAL/ghost.jpeg"
    bad.to_csv(tmp_path / "unknown.csv", index=False)
    with pytest.raises(DataError, match=r"unknown\.csv: 1 id\(s\) are not samples of the source \(e\.g\. 'train/"):
        load_data(DataConfig(source=f"folder:{kaggle}", splits_file=str(tmp_path / "unknown.csv")))
    df.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataError, match=r"short\.csv: 1 sample\(s\) of the source are not in the file"):
        load_data(DataConfig(source=f"folder:{kaggle}", splits_file=str(tmp_path / "short.csv")))
    flipped = df.copy()
    flipped.loc[0, "label"] = "PNEUMONIA" if flipped.loc[0, "label"] == "NORMAL" else "NORMAL"
    flipped.to_csv(tmp_path / "flipped.csv", index=False)
    with pytest.raises(DataError, match="label\\(s\\) differ from the source"):
        load_data(DataConfig(source=f"folder:{kaggle}", splits_file=str(tmp_path / "flipped.csv")))
    wrong = df.copy()
    wrong.loc[0, "split"] = "holdout"
    wrong.to_csv(tmp_path / "wrong.csv", index=False)
    with pytest.raises(DataError, match=r"split must be train, val or test; got \['holdout'\] in row\(s\) \[2\]"):
        load_data(DataConfig(source=f"folder:{kaggle}", splits_file=str(tmp_path / "wrong.csv")))
    with pytest.raises(DataError, match="does not exist"):
        load_data(DataConfig(source=f"folder:{kaggle}", splits_file=str(tmp_path / "none.csv")))


def test_patient_col_on_a_csv_source(tmp_path, pneumonia_arrays):
    x = pneumonia_arrays["train_images"]
    rows = []
    for i in range(40):
        rel = f"img/{i}.png"
        (tmp_path / "img").mkdir(exist_ok=True)
        Image.fromarray(x[i]).save(tmp_path / rel)
        rows.append({"path": rel, "label": ["a", "b"][(i // 4) % 2], "subject": f"S{i // 4}"})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    df, _ = split_source(f"csv:{tmp_path / 'labels.csv'}", patient_col="subject", val=0.2, test=0.2)
    assert set(df["group"]) == {f"S{k}" for k in range(10)}
    _check_disjoint(df)
    with pytest.raises(DataError, match="--patient-regex 'IMG' matches none"):
        split_source(f"csv:{tmp_path / 'labels.csv'}", patient_regex="IMG")
