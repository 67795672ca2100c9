"""The dataset recipes in configs/ run end to end (train 1+1 epochs, evaluate) on tiny fixtures in the real layouts.

Only what makes them fast is overridden (source path, image size, a small untrained model, 2 epochs); the
source options, splits, preset, two-stage schedule, stain normalisation and subgroups are the recipes' own.
"""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from medcls import evaluate, load_config, train
from medcls.testing.multimodal import write_btxrd_like

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAST = ["transforms.image_size=32", "model.name=test_resnet", "model.pretrained=false", "train.epochs=2",
        "train.batch_size=16", "train.warmup_epochs=0", "train.progress=false", "train.ema=false",
        "eval.n_bootstrap=0", "eval.batch_size=64"]


def _recipe(name: str, tmp_path: Path, source: str, *extra: str):
    """Train recipe ``name`` on ``source`` with the FAST overrides, evaluate it on test; return (run, metrics)."""
    overrides = [f"data.source={source}", f"output_dir={tmp_path / 'runs'}", *FAST, *extra]
    run = train(CONFIGS / f"{name}.yaml", overrides=overrides)
    return run, evaluate(run, "test")


def _kaggle(root: Path, images: np.ndarray) -> Path:
    """chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg with Kaggle file names (patient ids inside)."""
    k = 0
    for split, per_class in (("train", 24), ("val", 2), ("test", 8)):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
            for _ in range(per_class):
                name = f"IM-{k // 2:04d}-{k:04d}.jpeg" if cls == "NORMAL" else f"person{k // 2}_bacteria_{k}.jpeg"
                img = images[k] if cls == "NORMAL" else np.clip(images[k].astype(int) + 60, 0, 255).astype(np.uint8)
                Image.fromarray(np.kron(img, np.ones((3, 3), np.uint8))).save(root / split / cls / name)  # 84 px
                k += 1
    return root


def _he_patch(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """An H&E-like RGB patch: haematoxylin and eosin optical densities mixed by smooth random maps."""
    h, e = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
    ch, ce = (np.clip(gaussian_filter(rng.random((size, size)), s) * 8 - 3.2, 0, None) for s in (3, 5))
    od = ch[..., None] * h / np.linalg.norm(h) + ce[..., None] * e / np.linalg.norm(e)
    return np.clip(250 * np.exp(-od) + rng.normal(0, 2, od.shape), 0, 255).astype(np.uint8)


def _pcam(root: Path) -> Path:
    """camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5: x (N,96,96,3) uint8, y (N,1,1,1) uint8."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split, n in (("train", 32), ("valid", 16), ("test", 16)):
        x = np.stack([_he_patch(rng) for _ in range(n)])
        y = (np.arange(n) % 2).astype(np.uint8)
        x[y == 1, 40:56, 40:56] = (90, 30, 120)  # a dark blob in the centre 32x32 of the positives
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=x, chunks=(1, 96, 96, 3))
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=y.reshape(n, 1, 1, 1))
    return root


def test_recipes_parse_and_document_published_results():
    for name, needles in {"chest_xray": ("Kermany", "92.8%", "0.968"), "pcam": ("Veeling", "89.8%", "0.963"),
                          "btxrd": ("Yao et al. 2025", "YOLOv8s-cls")}.items():
        text = (CONFIGS / f"{name}.yaml").read_text()
        assert all(n in text for n in needles), name
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert cfg.model.pretrained and cfg.eval.split == "test"


def test_chest_xray_recipe(tmp_path, pneumonia_arrays):
    root = _kaggle(tmp_path / "chest_xray", pneumonia_arrays["train_images"])
    run, metrics = _recipe("chest_xray", tmp_path, f"folder:{root}", "train.head_only_epochs=1",
                           "data.min_val_size=4")
    assert run.config.train.backbone_lr_scale == 0.1 and run.config.transforms.preset == "xray"
    with open(run.path / "history.csv") as f:
        assert [r["head_only"] for r in csv.DictReader(f)] == ["True", "False"]  # both stages ran
    assert run.dataset.class_names == ("NORMAL", "PNEUMONIA") and run.dataset.extra["layout"] == "splits"
    assert metrics["n"] == 16 and 0 <= metrics["auc"] <= 1


def test_btxrd_recipe(tmp_path, pneumonia_arrays):
    xlsx, _ = write_btxrd_like(tmp_path / "BTXRD", pneumonia_arrays["train_images"], n=60)
    run, metrics = _recipe("btxrd", tmp_path, f"btxrd:{xlsx.parent}", "train.head_only_epochs=1",
                           "data.min_val_size=4")
    assert run.config.data.options == {"split": "center"} and run.config.model.fusion == "none"
    assert run.dataset.class_names == ("normal", "benign", "malignant")
    assert metrics["n"] == sum(1 for i in range(60) if i % 4 == 3)  # centres 2 + 3 only
    columns = metrics["subgroups"]["columns"]
    assert set(columns) == {"center", "gender", "site", "view", "age"}
    assert {g["group"] for g in columns["center"]["groups"]} == {"2", "3"}


def test_pcam_recipe(tmp_path):
    root = _pcam(tmp_path / "pcam")
    rng = np.random.default_rng(1)
    Image.fromarray(_he_patch(rng)).save(tmp_path / "ref.png")
    run, metrics = _recipe("pcam", tmp_path, f"hdf5:{root}", f"transforms.stain_reference={tmp_path / 'ref.png'}",
                           "data.min_val_size=4")
    assert run.config.transforms.preset == "histology"
    assert run.preprocess_cfg.stain == "macenko" and len(run.preprocess_cfg.stain_params["stain_matrix"]) == 3
    assert run.preprocess_cfg.size == 32 and run.dataset.class_names == ("normal", "tumor")
    assert metrics["n"] == 16 and metrics["tta"]["views"] == "histology"
