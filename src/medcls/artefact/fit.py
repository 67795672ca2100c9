"""Fitting post-processing: temperature and operating points from validation logits (pure, no files).

The calibration step (:mod:`medcls.calibration`) calls it on a run's val split and stores the result;
pruning (``medcls export --prune``) refits it for the pruned model. Multi-label: one temperature
shared by all labels and operating points per label (see :mod:`medcls.calibration`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DataError
from ..metrics import TemperatureScaler, choose_thresholds
from ..metrics.operating_points import choose_label_thresholds, select_label_thresholds
from .postprocess import Postprocess


def _scale(logits: np.ndarray, task: str, temperature: float) -> np.ndarray:
    return Postprocess(temperature=temperature).probabilities(logits, task)


def fit_postprocess(task: str, val_logits: np.ndarray, val_labels: np.ndarray, *, positive_index: int | None,
                    operating_point: str = "default", target_sensitivity: float = 0.95,
                    target_specificity: float = 0.95, calibrate: bool = True,
                    class_names: Sequence[str] | None = None) -> Postprocess:
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
        p = _scale(val_logits, task, temperature)[:, positive_index]
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
        p = _scale(val_logits, task, temperature)
        ops = choose_label_thresholds(y, p, class_names=names, target_sensitivity=target_sensitivity,
                                      target_specificity=target_specificity)
        thresholds, rules, _ = select_label_thresholds(ops, operating_point)
        notes += [f"label {k!r}: {v}" for k, v in ops["skipped"].items()]
        out.update({"operating_points": ops, "selected": operating_point, "thresholds": thresholds,
                    "threshold_rules": rules})
    out["notes"] = notes
    return Postprocess(**out)
