"""The calibration step: temperature and operating points fitted on the validation split, never on test.

:func:`calibrate_run` is the one step that writes post-processing: it fits a
checkpoint's temperature and operating points on val and stores them under that
checkpoint's name in ``RUN_DIR/postprocess.json`` (with its epoch and sha256), for
evaluation, ``predict``, export and serving to read. Training calls it for ``best``
and ``last``; ``medcls calibrate RUN`` runs it again (e.g. after changing
``eval.operating_point``).

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

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..artefact import Postprocess, checkpoint_identity, write_postprocess
from ..errors import DataError
from ..metrics import TemperatureScaler, choose_thresholds
from ..metrics.operating_points import choose_label_thresholds, select_label_thresholds

log = logging.getLogger("medcls")

__all__ = ["calibrate_run", "fit_postprocess", "split_logits"]


def split_logits(run, model: torch.nn.Module, table, device: torch.device, *, tta: bool = False,
                 where: str = "data") -> np.ndarray:
    """Logits of ``model`` on every sample of ``table`` (``tta``: averaged over the preset's views)."""
    from ..engine.loader import Batches
    from ..engine.predict import predict_logits
    from ..transforms.tta import tta_views

    batches = Batches(table, run.preprocess, batch_size=run.config.eval.batch_size, cache="off",
                      num_workers=run.config.data.num_workers, inputs=run.inputs, where=where, device=device)
    views = tta_views(run.model_spec.preset) if tta else None
    return predict_logits(model, batches, device, views=views)


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


def calibrate_run(run, checkpoint: str = "best", *, data=None, device: torch.device | None = None,
                  val_logits: np.ndarray | None = None) -> Postprocess:
    """Fit ``checkpoint``'s temperature and operating points on ``run``'s val split and store them.

    ``data`` (a LoadedData) saves reloading the dataset; ``val_logits`` saves the forward pass.
    """
    from ..data.sources import load_data

    ev = run.config.eval
    data = data or load_data(run.config.data)
    path = run.checkpoint_path(checkpoint)
    model, meta = run.build_model(checkpoint, device=str(device or "cpu"))
    if val_logits is None:
        val_logits = split_logits(run, model, data.val, device or torch.device("cpu"), where="val split")
    spec = run.spec
    post = fit_postprocess(spec.task, val_logits, np.asarray(data.val.labels), positive_index=spec.positive_index,
                           operating_point=ev.operating_point, target_sensitivity=ev.target_sensitivity,
                           target_specificity=ev.target_specificity, calibrate=ev.calibrate,
                           class_names=list(spec.class_names))
    post.checkpoint = checkpoint_identity(path, meta, checkpoint)
    out = write_postprocess(run.path, checkpoint, post)
    rule = f"{post.selected} at {post.threshold:.3g}" if spec.task == "binary" else post.selected
    log.info("calibrated %s (epoch %s) on val (n=%d): T = %.3f, operating point %s; written to %s", checkpoint,
             meta.get("epoch"), post.n_val or 0, post.temperature, rule, out)
    return post
