"""The ``folder`` source on real-layout fixtures rendered from PneumoniaMNIST."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcls.config import DataConfig
from medcls.data.sources import load_data
from medcls.data.sources.folder import folder_source, patient_groups
from medcls.errors import ConfigError, DataError

NPZ = Path("/work/shared/data/medmnist/pneumoniamnist.npz")


@functools.lru_cache(maxsize=1)
def _pneumonia() -> tuple[np.ndarray, np.ndarray]:
    if not NPZ.is_file():
        pytest.skip(f"{NPZ} not available")
    with np.load(NPZ) as z:
        return z["train_images"][:400], z["train_labels"][:400, 0]


def _images(label: int, n: int, start: int = 0) -> np.ndarray:
    x, y = _pneumonia()
    idx = np.flatnonzero(y == label)[start:start + n]
    assert len(idx) == n, "not enough PneumoniaMNIST images for the fixture"
    return x[idx]


def _save(img: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def make_kaggle(root: Path, n_patients: int = 10, per_patient: int = 2, val_per_class: int = 2) -> Path:
    """chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg with Kaggle-style file names."""
    normal = _images(0, n_patients * per_patient + val_per_class + 4)
    pneu = _images(1, n_patients * per_patient + val_per_class + 4)
    k = 0
    for p in range(1, n_patients + 1):
        for j in range(1, per_patient + 1):
            prefix = "NORMAL2-" if p % 2 else ""  # both naming styles of the Kaggle set
            _save(normal[k], root / "train" / "NORMAL" / f"{prefix}IM-{p:04d}-{j:04d}.jpeg")
            kind = "bacteria" if j % 2 else "virus"
            _save(pneu[k], root / "train" / "PNEUMONIA" / f"person{p}_{kind}_{j}.jpeg")
            k += 1
    for j in range(val_per_class):
        _save(normal[k + j], root / "val" / "NORMAL" / f"NORMAL2-IM-{900 + j:04d}-0001.jpeg")
        _save(pneu[k + j], root / "val" / "PNEUMONIA" / f"person{900 + j}_bacteria_1.jpeg")
    k += val_per_class
    for j in range(4):
        _save(normal[k + j], root / "test" / "NORMAL" / f"IM-{800 + j:04d}-0001.jpeg")
        _save(pneu[k + j], root / "test" / "PNEUMONIA" / f"person{800 + j}_virus_1.jpeg")
    return root


def make_flat(root: Path, n: int = 12) -> Path:
    """ROOT/{CLASS}/*.png (no split folders)."""
    for label, name in ((0, "normal"), (1, "pneumonia")):
        for i, img in enumerate(_images(label, n)):
            _save(img, root / name / f"{name}_{i:03d}.png")
    rgb = np.stack([_images(0, 1, start=n)[0]] * 3, axis=-1)
    for i in range(n // 2):
        _save(np.roll(rgb, i, axis=0), root / "other" / f"o{i}.png")
    return root


def test_kaggle_layout_rebuilds_tiny_val_by_patient(tmp_path):
    root = make_kaggle(tmp_path / "chest_xray")
    data = load_data(DataConfig(source=f"folder:{root}"))
    assert data.spec.task == "binary"
    assert data.spec.class_names == ("NORMAL", "PNEUMONIA")
    assert data.spec.positive_index == 1
    assert data.spec.channels == 1
    assert len(data.test) == 8  # the official test split is kept
    assert len(data.train) + len(data.val) == 40  # the 4-image val was rebuilt from train
    assert any("rebuilt" in n for n in data.notes)
    train_patients, val_patients = set(data.train.groups), set(data.val.groups)
    assert train_patients.isdisjoint(val_patients)
    assert {"IM-0001", "person1"} <= train_patients | val_patients
    assert set(np.unique(data.val.labels)) == {0, 1}
    img = data.train.load(0)
    assert img.dtype == np.uint8 and img.shape == (28, 28)


def test_kaggle_val_kept_when_large_enough(tmp_path):
    root = make_kaggle(tmp_path / "chest_xray")
    data = load_data(DataConfig(source=f"folder:{root}", min_val_size=4))
    assert len(data.val) == 4 and len(data.train) == 40
    assert all(i.startswith("val/") for i in data.val.ids)


def test_valid_folder_name_is_val(tmp_path):
    root = make_kaggle(tmp_path / "chest_xray")
    (root / "val").rename(root / "validation")
    src = folder_source(str(root))
    assert len(src.splits["val"]) == 4
    assert src.spec.extra["layout"] == "splits"


def test_flat_layout_is_train_only(tmp_path):
    root = make_flat(tmp_path / "flat")
    src = folder_source(str(root))
    assert src.splits["val"] is None and src.splits["test"] is None
    assert src.spec.task == "multiclass"
    assert src.spec.class_names == ("normal", "other", "pneumonia")
    assert src.spec.channels == 1  # guessed from the first image (gray)
    assert src.splits["train"].groups is None  # no patient ids in these names
    data = load_data(DataConfig(source=f"folder:{root}", min_val_size=1))
    assert len(data.train) + len(data.val) + len(data.test) == 30
    assert min(len(data.val), len(data.test)) > 0


def test_channels_guess_and_override(tmp_path):
    root = tmp_path / "rgb"
    for name, label in (("a", 0), ("b", 1)):
        for i, img in enumerate(_images(label, 3)):
            _save(np.stack([img] * 3, axis=-1), root / name / f"{i}.png")
    assert folder_source(str(root)).spec.channels == 3
    assert folder_source(str(root), channels=1).spec.channels == 1
    with pytest.raises(ConfigError, match="channels must be 1"):
        folder_source(str(root), channels=2)


def test_patient_groups():
    names = ["train/NORMAL/NORMAL2-IM-0001-0001.jpeg", "train/NORMAL/IM-0001-0002.jpeg",
             "train/PNEUMONIA/person12_bacteria_3.jpeg", "train/PNEUMONIA/person12_virus_40.jpeg", "x/other.png"]
    groups, matched = patient_groups(names)
    assert list(groups) == ["IM-0001", "IM-0001", "person12", "person12", "file:x/other.png"]
    assert matched == 4
    groups, matched = patient_groups(["a/p7-scan1.png", "a/p7-scan2.png", "a/q.png"], r"p(\d+)-")
    assert list(groups[:2]) == ["7", "7"] and matched == 2
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        patient_groups(["a"], "p(")


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        folder_source(str(tmp_path / "nope"))
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        folder_source(str(f))


def test_no_class_folders(tmp_path):
    _save(_images(0, 1)[0], tmp_path / "loose.png")
    with pytest.raises(DataError, match=r"no class folders.*1 image file\(s\) directly"):
        folder_source(str(tmp_path))


def test_empty_class_folder_is_named(tmp_path):
    root = make_flat(tmp_path / "flat")
    (root / "empty_class").mkdir()
    (root / "empty_class" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"empty_class.*contain no images"):
        folder_source(str(root))


def test_no_images_at_all(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images in"):
        folder_source(str(tmp_path))


def test_single_class(tmp_path):
    _save(_images(0, 1)[0], tmp_path / "only" / "a.png")
    with pytest.raises(DataError, match="need at least 2 classes"):
        folder_source(str(tmp_path))


def test_classes_must_agree_across_splits(tmp_path):
    root = make_kaggle(tmp_path / "chest_xray")
    (root / "test" / "PNEUMONIA").rename(root / "test" / "COVID")
    with pytest.raises(DataError, match=r"test split.*missing: PNEUMONIA; extra: COVID"):
        folder_source(str(root))


def test_mixed_and_duplicate_split_folders(tmp_path):
    root = make_kaggle(tmp_path / "chest_xray")
    (root / "NORMAL").mkdir()
    with pytest.raises(DataError, match="mixes split folders"):
        folder_source(str(root))
    (root / "NORMAL").rmdir()
    (root / "valid").mkdir()
    with pytest.raises(DataError, match="both 'val' and 'valid'"):
        folder_source(str(root))


def test_nested_dataset_hint(tmp_path):
    make_kaggle(tmp_path / "download" / "chest_xray")
    _save(_images(0, 1)[0], tmp_path / "download" / "other" / "a.png")
    with pytest.raises(DataError, match=r"not a class folder.*nested dataset: try folder:.*download/chest_xray"):
        folder_source(str(tmp_path / "download"))


def test_kaggle_nested_duplicate_is_ignored(tmp_path):
    root = make_kaggle(tmp_path / "chest_xray")
    make_kaggle(root / "chest_xray", n_patients=2)  # the Kaggle archive's duplicate copy
    (root / "__MACOSX" / "train").mkdir(parents=True)
    with pytest.warns(UserWarning, match="ignoring chest_xray"):
        src = folder_source(str(root))
    assert len(src.splits["train"]) == 40


def _add_bad_files(root: Path) -> None:
    (root / "train" / "NORMAL" / "corrupt.jpeg").write_bytes(b"this is not a jpeg")
    good = (root / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg").read_bytes()
    (root / "train" / "PNEUMONIA" / "person99_bacteria_1.jpeg").write_bytes(good[: len(good) // 2])


def test_corrupt_and_truncated_images_are_skipped_with_warning(tmp_path):
    root = make_kaggle(tmp_path / "chest_xray")
    _add_bad_files(root)
    with pytest.warns(UserWarning, match=r"(?i)2 of 42 image\(s\) cannot be read.*corrupt\.jpeg.*person99.*truncated"):
        src = folder_source(str(root))
    assert len(src.splits["train"]) == 40
    assert not any("corrupt" in i or "person99" in i for i in src.splits["train"].ids)
    assert any("skipped 2 unreadable" in n for n in src.notes)


def test_corrupt_images_strict(tmp_path):
    root = make_kaggle(tmp_path / "chest_xray")
    _add_bad_files(root)
    with pytest.raises(DataError, match=r"cannot be read.*corrupt\.jpeg"):
        load_data(DataConfig(source=f"folder:{root}", options={"strict": True}))


def test_verify_false_does_not_decode(tmp_path):
    root = make_kaggle(tmp_path / "chest_xray")
    _add_bad_files(root)
    src = folder_source(str(root), verify=False)
    assert len(src.splits["train"]) == 42  # found at load time instead


def test_unknown_option_did_you_mean(tmp_path):
    root = make_flat(tmp_path / "flat")
    with pytest.raises(ConfigError, match=r"data\.options\.verfy.*Did you mean 'verify'\?.*Options: verify, strict"):
        load_data(DataConfig(source=f"folder:{root}", options={"verfy": False}))


def test_custom_patient_regex_matching_nothing_warns(tmp_path):
    root = make_flat(tmp_path / "flat")
    with pytest.warns(UserWarning, match="matched none"):
        src = folder_source(str(root), patient_regex=r"patient(\d+)")
    assert src.splits["train"].groups is None


def test_scan_reads_headers_not_pixels(tmp_path, monkeypatch):
    root = make_kaggle(tmp_path / "chest_xray")
    _add_bad_files(root)
    decoded: list[str] = []
    import medcls.data.images as images

    original = images.decode_image
    monkeypatch.setattr(images, "decode_image", lambda data, name="image", **kw: decoded.append(name) or original(
        data, name, **kw))
    with pytest.warns(UserWarning, match=r"2 of 42 image\(s\) cannot be read"):
        src = folder_source(str(root))
    assert decoded == [] and len(src.splits["train"]) == 40 and src.spec.channels == 1
    with pytest.warns(UserWarning, match=r"2 of 42 image\(s\) cannot be read"):
        folder_source(str(root), verify="decode")
    assert len(decoded) == 42 + 4 + 8  # every file of train (bad ones included), val and test


def test_bad_verify_value(tmp_path):
    root = make_flat(tmp_path / "flat")
    with pytest.raises(ConfigError, match=r"option verify must be one of header, decode, off.*got 'quick'"):
        load_data(DataConfig(source=f"folder:{root}", options={"verify": "quick"}))
