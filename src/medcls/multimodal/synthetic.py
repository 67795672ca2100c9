"""A synthetic benchmark where the label depends jointly on the image and the metadata (tests, benchmarks).

Each 32 px gray image has a planted bright square (``f = 1``) or not (``f = 0``, P = 1/2);
the ``view`` column is ``frontal`` (``m = 1``) with probability ``q``, else ``lateral``. The label
is ``positive`` exactly when ``f == m``. Neither input alone suffices:

* the best image-only score (using ``f``) has AUC = ``q`` (its ceiling),
* the best metadata-only score has AUC = 0.5 (``m`` is independent of the label),
* image + metadata determine the label (AUC = 1).

``age`` (numeric, a few blanks) and ``sex`` (categorical) are noise; ``report`` is a short text
that mentions the view. Written as a CSV manifest (``split`` column: train/val/test) + PNG files.
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
