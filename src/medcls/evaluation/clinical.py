"""Post-hoc steps fitted on the validation split, never on test: temperature and operating points.

The result is stored in ``RUN_DIR/postprocess.json`` and used by ``predict``
(and the bundle): calibrated probabilities = softmax(logits / T); the binary
decision = p(positive) >= the selected operating point's threshold.

Multi-label runs: probabilities = sigmoid(logits / T) with **one temperature
shared by all labels** (fitted on the pooled per-label NLL). A per-label T would
be fitted on a handful of positives for rare findings (or not at all when a label
has one class on val) and would not change any decision, since thresholds are
chosen per label on the calibrated probabilities (a monotone map of the logit);
one T keeps calibration stable and ``temperature`` a single number everywhere.
Operating points are chosen **per label** on val (``operating_points.per_label``);
``thresholds`` maps each label to the threshold of ``eval.operating_point``
(0.5 for a label that has a single class on val, with a note). The decision is
the list of labels with p >= their threshold, possibly empty ("no finding").
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..metrics import TemperatureScaler, choose_thresholds
from ..metrics.operating_points import RULES, choose_label_thresholds, select_label_thresholds
from ..utils import atomic_write_json

POSTPROCESS_FILE = "postprocess.json"
NO_FINDING = "no finding"
__all__ = ["NO_FINDING", "POSTPROCESS_FILE", "RULES", "findings_text", "fit_postprocess", "load_postprocess",
           "save_postprocess", "scale_probs"]


def findings_text(findings: Sequence[str]) -> str:
    """A multi-label decision as one string: labels joined by ``;``, or ``no finding``."""
    return ";".join(findings) if len(findings) else NO_FINDING


def scale_probs(logits: np.ndarray, task: str, temperature: float) -> np.ndarray:
    from ..engine.predict import probabilities

    return probabilities(np.asarray(logits, np.float32) / temperature, task)


def fit_postprocess(task: str, val_logits: np.ndarray, val_labels: np.ndarray, *, positive_index: int | None,
                    operating_point: str = "default", target_sensitivity: float = 0.95,
                    target_specificity: float = 0.95, calibrate: bool = True,
                    class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Fit temperature and operating points (binary; per label for multilabel) on validation logits.

    Failures fall back (T = 1, threshold 0.5), with a note. ``class_names`` names
    the label columns of a multilabel task (default ``label_0``, ``label_1``, ...).
    """
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
    elif task == "multilabel":
        y = np.asarray(val_labels)
        names = list(class_names) if class_names is not None else [f"label_{k}" for k in range(y.shape[1])]
        p = scale_probs(val_logits, task, temperature)
        ops = choose_label_thresholds(y, p, class_names=names, target_sensitivity=target_sensitivity,
                                      target_specificity=target_specificity)
        thresholds, rules, _ = select_label_thresholds(ops, operating_point)
        notes += [f"label {k!r}: {v}" for k, v in ops["skipped"].items()]
        out.update({"operating_points": ops, "selected": operating_point, "thresholds": thresholds,
                    "threshold_rules": rules})
    out["notes"] = notes
    return out


def save_postprocess(run_path: Path, post: dict[str, Any]) -> None:
    atomic_write_json(Path(run_path) / POSTPROCESS_FILE, post)


def load_postprocess(run_path: Path) -> dict[str, Any] | None:
    p = Path(run_path) / POSTPROCESS_FILE
    return json.loads(p.read_text()) if p.is_file() else None
