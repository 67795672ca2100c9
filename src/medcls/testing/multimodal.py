"""A synthetic benchmark where the label depends jointly on the image and the metadata (tests, benchmarks).

Each 32 px gray image has a planted bright square (``f = 1``) or not (``f = 0``, P = 1/2);
the ``view`` column is ``frontal`` (``m = 1``) with probability ``q``, else ``lateral``. The label
is ``positive`` exactly when ``f == m``. Neither input alone suffices:

* the best image-only score (using ``f``) has AUC = ``q`` (its ceiling),
* the best metadata-only score has AUC = 0.5 (``m`` is independent of the label),
* image + metadata determine the label (AUC = 1).

``age`` (numeric, a few blanks) and ``sex`` (categorical) are noise; ``report`` is a short text
that mentions the view. Written as a CSV manifest (``split`` column: train/val/test) + PNG files.

``write_btxrd_like`` writes a folder in the real BTXRD layout (``dataset.xlsx`` + ``images/``) from
any uint8 images, for the ``btxrd:`` source's tests and the multimodal benchmark.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def image_only_ceiling(q: float) -> float:
    """AUC of the Bayes image-only score on this benchmark (derivation in the module doc)."""
    return max(q, 1 - q)


def make_joint_dataset(root: str | Path, *, n_train: int = 320, n_val: int = 96, n_test: int = 192, q: float = 0.75,
                       size: int = 32, seed: int = 0) -> Path:
    """Write ``root/manifest.csv`` and ``root/images/*.png``; return the manifest path."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(n):
            f = int(rng.random() < 0.5)
            m = int(rng.random() < q)
            img = rng.normal(100, 20, (size, size))
            if f:
                s = size // 4
                r, c = rng.integers(0, size - s, 2)
                img[r : r + s, c : c + s] += 90
            name = f"{split}_{i:04d}.png"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / name)
            view = "frontal" if m else "lateral"
            age = None if rng.random() < 0.05 else round(float(rng.normal(50, 15)), 1)
            rows.append({"path": f"images/{name}", "label": "positive" if f == m else "negative", "split": split,
                         "age": age, "sex": "MF"[int(rng.random() < 0.5)], "view": view,
                         "report": f"{view} view of the knee , patient with pain"})
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def joint_config(manifest: str | Path, output_dir: str | Path, *, fusion: str = "concat", epochs: int = 6,
                 model: str = "resnet18", name: str = "joint", text_encoder: str | None = None) -> dict:
    """A training config for :func:`make_joint_dataset` (image 32 px, metadata age/sex/view)."""
    cfg = {
        "name": name, "seed": 0, "output_dir": str(output_dir),
        "data": {"source": f"csv:{manifest}", "options": {"split_col": "split", "classes": ["negative", "positive"],
                                                          "channels": 1}, "min_val_size": 8},
        "transforms": {"image_size": 32, "strength": 0.0},
        "inputs": {"numeric": ["age"], "categorical": ["sex", "view"]},
        "model": {"name": model, "fusion": fusion, "fusion_dim": 32},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 3e-3, "progress": False, "warmup_epochs": 0.5,
                  "label_smoothing": 0.0, "amp": "off"},
        "eval": {"n_bootstrap": 200},
    }
    if text_encoder:
        cfg["inputs"].update({"text": "report", "text_encoder": str(text_encoder), "text_max_length": 16})
    return cfg


BTXRD_SITES = ["hand", "ulna", "radius", "humerus", "foot", "tibia", "fibula", "femur", "hip bone", "ankle-joint",
               "knee-joint", "hip-joint", "wrist-joint", "elbow-joint", "shoulder-joint"]
BTXRD_SUBTYPES = ["osteochondroma", "multiple osteochondromas", "simple bone cyst", "giant cell tumor", "osteofibroma",
                  "synovial osteochondroma", "other bt", "osteosarcoma", "other mt"]


def write_btxrd_like(root: str | Path, images: np.ndarray, n: int = 60, *, edit=None) -> tuple[Path, np.ndarray]:
    """A BTXRD-layout folder: ``root/dataset.xlsx`` (Sheet1, the real columns in order) + ``root/images/IMG00000k.jpeg``.

    ``images`` (uint8, at least ``n``) stand in for the radiographs; every 9th file is ``.jpg`` as in the
    real release. Labels cycle normal, normal, benign, benign, malignant; three centres; ``age`` and the
    site/view one-hot columns follow the row index (so the metadata alone predicts the label here).
    ``edit(df)`` may change the table before it is written. Returns the xlsx path and the class per row
    (0 normal, 1 benign, 2 malignant).
    """
    from PIL import Image

    root = Path(root)
    kind = np.array([(0, 0, 1, 1, 2)[i % 5] for i in range(n)])  # 0 normal, 1 benign, 2 malignant
    rows = []
    for i in range(n):
        image_id = f"IMG{i + 1:06d}"
        path = root / "images" / f"{image_id}{'.jpg' if i % 9 == 4 else '.jpeg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(path)
        row = {"image_id": image_id, "center": 1 + (i % 4 == 3) + (i % 8 == 7), "age": 10 + i % 60,
               "gender": "MF"[i % 2]}
        row.update({s: int(j == i % len(BTXRD_SITES)) for j, s in enumerate(BTXRD_SITES)})
        row.update({"tumor": int(kind[i] > 0), "benign": int(kind[i] == 1), "malignant": int(kind[i] == 2)})
        row.update({s: int((kind[i], j) in ((1, 0), (2, 7))) for j, s in enumerate(BTXRD_SUBTYPES)})
        row.update({"upper limb": int(i % len(BTXRD_SITES) < 4), "lower limb": int(i % len(BTXRD_SITES) >= 4), "pelvis": 0})
        row.update({"frontal": int(i % 3 != 1), "lateral": int(i % 3 == 1), "oblique": 0})
        rows.append(row)
    df = pd.DataFrame(rows)
    if edit is not None:
        df = edit(df)
    path = root / "dataset.xlsx"
    df.to_excel(path, sheet_name="Sheet1", index=False)
    return path, kind
