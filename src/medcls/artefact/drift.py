"""The drift reference of a bundle (``drift.safetensors``): how the validation split looked to the model.

Written at export beside the out-of-distribution gate, read through the one loader (``Artefact.drift``);
what it holds and the tests that use it: :mod:`medcls.metrics.drift`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..metrics.drift import DriftReference

DRIFT_FILE = "drift.safetensors"


def predicted_index(probs: np.ndarray, decide, class_names: list[str]) -> np.ndarray:
    """The class each row is decided as (``decide``: the bundle's decision at its operating point); for a
    multilabel model, whose decision is a set of labels, the most probable label."""
    out = []
    for p in probs:
        d = decide(p)
        out.append(class_names.index(d) if isinstance(d, str) else int(np.argmax(p)))
    return np.asarray(out, np.int64)


def save_reference(ref: DriftReference, path: Path) -> None:
    from safetensors.numpy import save

    from ..utils import atomic_write_bytes

    # C order: safetensors.numpy writes an array's memory as it lies, so a Fortran-ordered one (scikit-learn's
    # PCA components_) would come back transposed in place
    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in
               (("mean", ref.mean), ("components", ref.components), ("features", ref.features), ("scores", ref.scores))}
    tensors["predicted"] = np.ascontiguousarray(ref.predicted, np.int64)
    meta = {"threshold": repr(ref.threshold), "class_names": json.dumps(ref.class_names)}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_reference(path: Path) -> DriftReference:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
    return DriftReference(t["mean"].astype(np.float64), t["components"].astype(np.float64),
                          t["features"].astype(np.float64), t["scores"].astype(np.float64), t["predicted"],
                          float(meta["threshold"]), json.loads(meta.get("class_names", "[]")))
