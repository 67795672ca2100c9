"""Post-hoc steps fitted on the validation split, never on test: temperature and operating points.

The result is stored in ``RUN_DIR/postprocess.json`` and used by ``predict``
(and the bundle): calibrated probabilities = softmax(logits / T); the binary
decision = p(positive) >= the selected operating point's threshold.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..metrics import TemperatureScaler, choose_thresholds
from ..utils import atomic_write_json

POSTPROCESS_FILE = "postprocess.json"
RULES = ("default", "youden", "max_f1", "target_sensitivity", "target_specificity")


def scale_probs(logits: np.ndarray, task: str, temperature: float) -> np.ndarray:
    from ..engine.predict import probabilities

    return probabilities(np.asarray(logits, np.float32) / temperature, task)


def fit_postprocess(task: str, val_logits: np.ndarray, val_labels: np.ndarray, *, positive_index: int | None,
                    operating_point: str = "default", target_sensitivity: float = 0.95,
                    target_specificity: float = 0.95, calibrate: bool = True) -> dict[str, Any]:
    """Fit temperature and (binary) operating points on validation logits. Failures fall back, with a note."""
    notes: list[str] = []
    temperature = 1.0
    if calibrate:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                temperature = TemperatureScaler(task=task).fit(val_logits, val_labels).temperature_
            notes += [str(w.message) for w in caught]
        except DataError as e:
            notes.append(f"temperature scaling not fitted on val ({e}); using T = 1")
    out: dict[str, Any] = {"fitted_on": "val", "n_val": len(val_labels), "temperature": float(temperature),
                           "calibrated": calibrate and temperature != 1.0}
    if task == "binary":
        y = np.asarray(val_labels) == positive_index
        p = scale_probs(val_logits, task, temperature)[:, positive_index]
        try:
            ops = choose_thresholds(y, p, target_sensitivity=target_sensitivity, target_specificity=target_specificity)
        except DataError as e:
            notes.append(f"operating points cannot be chosen on val ({e}); falling back to 0.5")
            ops = {"default": {"threshold": 0.5, "rule": "fixed threshold 0.5 (fallback)", "val": {}},
                   "chosen_on": "val"}
        selected = operating_point if operating_point in ops else "default"
        if selected != operating_point:
            notes.append(f"operating point {operating_point!r} unavailable; using 'default' (0.5)")
        out.update({"operating_points": ops, "selected": selected,
                    "threshold": float(ops[selected]["threshold"])})
    out["notes"] = notes
    return out


def save_postprocess(run_path: Path, post: dict[str, Any]) -> None:
    atomic_write_json(Path(run_path) / POSTPROCESS_FILE, post)


def load_postprocess(run_path: Path) -> dict[str, Any] | None:
    p = Path(run_path) / POSTPROCESS_FILE
    return json.loads(p.read_text()) if p.is_file() else None
