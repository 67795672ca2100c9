"""``medcls data check`` on real-layout fixtures rendered from PneumoniaMNIST, and on the real file."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcls.cli.main import main
from medcls.data.check.scan import check_data, fingerprint, near_pairs, phash64, thumb_correlation
from medcls.errors import ConfigError

SIZE = 96  # Kaggle-style JPEGs are rendered at this size from the 28 px originals


@pytest.fixture(scope="module")
def distinct(pneumonia_arrays) -> np.ndarray:
    """PneumoniaMNIST train images whose pixels occur once in the whole file (its own duplicates removed)."""
    every = np.concatenate([pneumonia_arrays[f"{s}_images"] for s in ("train", "val", "test")])
    keys = [hashlib.sha1(a.tobytes()).hexdigest() for a in every]
    seen: dict[str, int] = {}
    for k in keys:
        seen[k] = seen.get(k, 0) + 1
    train = pneumonia_arrays["train_images"]
    return train[[i for i in range(len(train)) if seen[keys[i]] == 1][:1500]]


def _render(img28: np.ndarray, size: int = SIZE) -> Image.Image:
    return Image.fromarray(img28).resize((size, size), Image.Resampling.BICUBIC)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=kw.pop("quality", 95), **kw) if path.suffix == ".jpeg" else img.save(path, **kw)
    return path


def make_kaggle(root: Path, images: np.ndarray) -> Path:
    """chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg, distinct images, one patient per split."""
    k = iter(range(len(images)))
    for p in range(1, 7):
        _save(_render(images[next(k)]), root / "train" / "NORMAL" / f"IM-{p:04d}-0001.jpeg")
        _save(_render(images[next(k)]), root / "train" / "PNEUMONIA" / f"person{p}_bacteria_{p + 10}.jpeg")
    for p in range(900, 903):
        _save(_render(images[next(k)]), root / "val" / "NORMAL" / f"NORMAL2-IM-{p:04d}-0001.jpeg")
        _save(_render(images[next(k)]), root / "val" / "PNEUMONIA" / f"person{p}_virus_1.jpeg")
    for p in range(800, 804):
        _save(_render(images[next(k)]), root / "test" / "NORMAL" / f"IM-{p:04d}-0001.jpeg")
        _save(_render(images[next(k)]), root / "test" / "PNEUMONIA" / f"person{p}_bacteria_1.jpeg")
    return root


@pytest.fixture(scope="module")
def clean(tmp_path_factory, distinct) -> Path:
    root = make_kaggle(tmp_path_factory.mktemp("clean") / "chest_xray", distinct[:26])
    rgba = np.dstack([np.asarray(_render(distinct[40]))] * 3 + [np.full((SIZE, SIZE), 255, np.uint8)])
    _save(Image.fromarray(rgba, "RGBA"), root / "train" / "NORMAL" / "IM-0007-0001.png")
    deep = (np.asarray(_render(distinct[41])).astype(np.uint16) * 257).astype(np.uint16)
    _save(Image.fromarray(deep), root / "train" / "PNEUMONIA" / "person7_virus_1.png")  # 16-bit gray PNG
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory, distinct) -> Path:
    """The clean layout plus an exact copy (train->val), a resized copy (train->test), a JPEG q70 copy
    (val->test), a corrupt file and a patient (person3) in train and test."""
    root = make_kaggle(tmp_path_factory.mktemp("planted") / "chest_xray", distinct[:26])
    shutil.copy(root / "train" / "PNEUMONIA" / "person1_bacteria_11.jpeg", root / "val" / "PNEUMONIA" / "person950_virus_1.jpeg")
    src = Image.open(root / "train" / "NORMAL" / "IM-0002-0001.jpeg")
    _save(src.resize((64, 64), Image.Resampling.LANCZOS), root / "test" / "NORMAL" / "IM-0850-0001.png")
    src = Image.open(root / "val" / "NORMAL" / "NORMAL2-IM-0901-0001.jpeg")
    _save(src, root / "test" / "NORMAL" / "IM-0851-0001.jpeg", quality=70)
    data = (root / "train" / "NORMAL" / "IM-0003-0001.jpeg").read_bytes()
    (root / "train" / "NORMAL" / "IM-0099-0001.jpeg").write_bytes(data[: len(data) // 3])  # truncated
    _save(_render(distinct[45]), root / "test" / "PNEUMONIA" / "person3_virus_7.jpeg")
    return root


def _pairs(dups: dict, key: str) -> set[tuple[str, str]]:
    return {(p["id_a"], p["id_b"]) for p in dups["cross_split"][key]["listed"]}


def test_planted_duplicates_corrupt_file_and_shared_patient_are_found(planted):
    r = check_data(f"folder:{planted}")
    ex, nd = r.exact_duplicates["cross_split"], r.near_duplicates["cross_split"]
    assert _pairs(r.exact_duplicates, "train/val") == {("train/PNEUMONIA/person1_bacteria_11.jpeg",
                                                         "val/PNEUMONIA/person950_virus_1.jpeg")}
    assert ex["train/test"]["pairs"] == ex["val/test"]["pairs"] == 0
    assert _pairs(r.near_duplicates, "train/test") == {("train/NORMAL/IM-0002-0001.jpeg", "test/NORMAL/IM-0850-0001.png")}
    assert _pairs(r.near_duplicates, "val/test") == {("val/NORMAL/NORMAL2-IM-0901-0001.jpeg",
                                                       "test/NORMAL/IM-0851-0001.jpeg")}
    assert nd["train/val"]["pairs"] == 0
    for p in nd["train/test"]["listed"] + nd["val/test"]["listed"]:
        assert p["distance"] <= r.settings["max_distance"] and p["correlation"] >= r.settings["min_correlation"]
    assert [(u["split"], u["id"]) for u in r.unreadable] == [("train", "train/NORMAL/IM-0099-0001.jpeg")]
    assert "cannot decode" in r.unreadable[0]["error"]
    assert r.group_overlap["train/test"]["groups"] == 1
    assert r.group_overlap["train/test"]["examples"][0]["group"] == "person3"
    assert r.group_overlap["train/val"]["groups"] == r.group_overlap["val/test"]["groups"] == 0
    assert r.leakage and len(r.leakage_reasons) == 4  # exact train/val, near train/test and val/test, person3
    assert r.counts["train"]["n"] == 13  # the corrupt file is counted, listed, and not decoded
    assert any("unreadable" in w for w in r.warnings)


def test_distinct_images_raise_no_alarm(clean):
    r = check_data(f"folder:{clean}")
    assert not r.leakage and r.leakage_reasons == []
    for dups in (r.exact_duplicates, r.near_duplicates):
        assert all(v["pairs"] == 0 for v in dups["cross_split"].values())
        assert all(v["pairs"] == 0 for v in dups["within_split"].values())
    assert r.unreadable == []
    assert all(v["groups"] == 0 for v in r.group_overlap.values())
    assert r.images["modes"] == {"gray": 27, "RGBA": 1} and r.images["bit_depth"] == {"8": 27, "16": 1}
    assert r.images["sizes"] == {f"{SIZE}x{SIZE}": 28}
    assert r.counts["val"]["per_class"] == {"NORMAL": 3, "PNEUMONIA": 3}
    assert "val: class 'NORMAL' has only 3 images (< 10)" in r.warnings


def test_no_false_alarm_on_hundreds_of_distinct_images(tmp_path, distinct):
    """1,500 distinct X-rays (1.1 million pairs, ~150 within phash distance 6) in three splits: none is flagged."""
    labels = np.zeros((len(distinct), 1), np.uint8)
    parts = {"train": slice(0, 1200), "val": slice(1200, 1350), "test": slice(1350, 1500)}
    np.savez(tmp_path / "distinct.npz", **{f"{s}_images": distinct[sl] for s, sl in parts.items()},
             **{f"{s}_labels": labels[sl] for s, sl in parts.items()})
    r = check_data("medmnist:pneumoniamnist", options={"path": str(tmp_path / "distinct.npz")})
    assert r.settings["phash_candidates"] > 50  # the phash filter alone would have raised alarms
    assert not r.leakage
    assert sum(v["pairs"] for v in r.near_duplicates["within_split"].values()) == 0


def test_thresholds_separate_copies_from_distinct_images(distinct):
    """The measurements behind the defaults, on a small sample: copies pass both tests, distinct images fail one."""
    def fp(img) -> np.ndarray:
        return fingerprint(np.asarray(img))[1]

    def reencode(img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return Image.open(io.BytesIO(buf.getvalue()))

    for img28 in distinct[:30]:
        orig = reencode(_render(img28, 128), "JPEG", quality=95)
        copies = [orig.resize((96, 96), Image.Resampling.LANCZOS), reencode(orig, "JPEG", quality=70),
                  reencode(orig.resize((80, 80), Image.Resampling.LANCZOS), "JPEG", quality=70), orig.convert("RGB")]
        th = np.stack([fp(orig), *[fp(c) for c in copies]])
        h = phash64(th)
        assert (np.bitwise_count(h[0] ^ h[1:]) <= 6).all()
        assert (thumb_correlation(th, np.zeros(4, int), np.arange(1, 5)) >= 0.99).all()
    th = np.stack([fp(a) for a in distinct[:500]])
    i, j, _ = near_pairs(phash64(th), 6)
    assert len(i) > 0 and thumb_correlation(th, i, j).max() < 0.99


def test_near_pairs_equals_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 800, dtype=np.uint64) & np.uint64(0x0F0F0F0FFFFFFFFF)  # biased bits, like X-rays
    flips = np.array([sum(1 << int(b) for b in rng.choice(64, rng.integers(0, 10), replace=False)) for _ in range(400)],
                     dtype=np.uint64)
    h = np.concatenate([base, base[rng.integers(0, 800, 400)] ^ flips])
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    for max_d in (0, 1, 3, 6, 9):
        i, j, dist = near_pairs(h, max_d)
        want = set(zip(*np.nonzero(np.triu(d <= max_d, 1)), strict=True))
        assert set(zip(i.tolist(), j.tolist(), strict=True)) == {(int(a), int(b)) for a, b in want}
        assert (dist == d[i, j]).all()


def test_phash64_is_imagehash_phash(distinct):
    import imagehash

    rng = np.random.default_rng(0)
    images = [*distinct[:20], (rng.random((40, 50, 3)) * 255).astype(np.uint8)]
    mine = phash64(np.stack([fingerprint(a)[1] for a in images]))
    ref = [int(str(imagehash.phash(Image.fromarray(a))), 16) for a in images]
    assert mine.tolist() == ref


def test_cli_writes_json_and_html_never_overwrites_and_strict_exit_code(planted, clean, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "first"
    assert main(["data", "check", f"folder:{planted}", "-o", str(out), "--strict"]) == 1
    captured = capsys.readouterr()
    assert "LEAKAGE" in captured.out and "leakage between splits" in captured.err
    doc = json.loads((out / "report.json").read_text())
    assert doc["leakage"] is True and doc["exact_duplicates"]["cross_split"]["train/val"]["pairs"] == 1
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 * 3 + 8  # 3 leaked pairs side by side + class samples
    assert "person950_virus_1.jpeg" in html and "IM-0099-0001.jpeg" in html
    before = (out / "report.json").read_bytes()
    assert main(["data", "check", f"folder:{planted}", "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "report.json").read_bytes() == before
    assert main(["data", "check", f"folder:{clean}", "--strict"]) == 0  # no leakage: 0 even with --strict
    assert main(["data", "check", str(clean)]) == 0  # a bare folder path works too
    made = sorted((tmp_path / "data-check").iterdir())
    assert len(made) == 2 and all((d / "report.html").is_file() for d in made)
    assert main(["data", "check", f"folder:{planted}", "-o", str(tmp_path / "third")]) == 0  # leakage, not strict


def test_cli_user_errors_exit_2(tmp_path, capsys):
    assert main(["data", "check", "medmnist:pneumoniamnist", "-O", "size"]) == 2
    assert "--option expects KEY=VALUE" in capsys.readouterr().err
    assert main(["data", "check", "folder:" + str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="max_distance"):
        check_data("folder:.", max_distance=40)


def test_max_images_samples_each_split_evenly(pneumonia_npz):
    r = check_data("medmnist:pneumoniamnist", options={"path": str(pneumonia_npz)}, max_images=300)
    assert r.settings["sampled"] and sum(r.checked.values()) <= 300
    assert r.checked == {"train": 241, "val": 26, "test": 31}  # proportional to 4708/524/624
    assert r.counts["train"]["n"] == 4708  # counts always cover every image
    assert any("--max-images" in n for n in r.notes)


def test_real_pneumoniamnist_train_val_duplicates(pneumonia_npz):
    r = check_data("medmnist:pneumoniamnist", options={"path": str(pneumonia_npz)})
    tv = r.exact_duplicates["cross_split"]["train/val"]
    assert (tv["pairs"], tv["clusters"], tv["images"]) == (10, 8, {"train": 10, "val": 8})
    assert r.exact_duplicates["cross_split"]["train/test"]["pairs"] == 0
    assert r.exact_duplicates["cross_split"]["val/test"]["pairs"] == 0
    assert [r.exact_duplicates["within_split"][s]["pairs"] for s in ("train", "val", "test")] == [18, 0, 3]
    assert all(v["pairs"] == 0 for v in r.near_duplicates["cross_split"].values())
    assert r.leakage and r.group_overlap is None
