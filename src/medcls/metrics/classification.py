"""Classification metrics as pure numpy functions.

Data arguments are positional, options keyword-only (scikit-learn style). A
metric that is undefined for the given data (AUC with one class present, PPV
with no positive predictions, ...) is ``nan``; nothing raises on it. Bad input
(wrong shapes, labels out of range, non-finite scores) raises
:class:`medcls.errors.DataError`. Dict results hold plain Python ``float``/``int``
so they can be written with ``json.dumps`` directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np
from scipy.stats import rankdata

from ..choices import Task
from ..errors import ConfigError, DataError, did_you_mean
from .inputs import (
    binary_inputs,
    binary_task_inputs,
    check_array,
    check_labels,
    check_same_length,
    multiclass_inputs,
    multilabel_inputs,
)

TASKS = get_args(Task)


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for the given data and was reported as ``nan``."""


# --------------------------------------------------------------- primitives
def _div(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr[~np.isnan(arr)].mean()) if (~np.isnan(arr)).any() else float("nan")


def _auc_rows(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC for each row of boolean labels ``y`` and scores ``s`` (both (B, N))."""
    ranks = rankdata(s, axis=1)  # ties get the average rank
    n_pos = y.sum(axis=1).astype(np.float64)
    n_neg = y.shape[1] - n_pos
    u = (ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = u / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def _warn_undefined(what: str) -> None:
    warnings.warn(f"{what} is undefined (only one class present); reported as nan",
                  UndefinedMetricWarning, stacklevel=3)


def roc_auc(y_true: Any, score: Any) -> float:
    """Binary ROC AUC as the Mann-Whitney U statistic (ties count one half).

    ``y_true`` holds 0/1 labels of shape (N,), ``score`` higher-means-positive
    scores of shape (N,). Returns ``nan`` (with an :class:`UndefinedMetricWarning`)
    when only one class is present.
    """
    y, s = binary_inputs(y_true, score)
    auc = float(_auc_rows(y[None], s[None])[0])
    if np.isnan(auc):
        _warn_undefined("ROC AUC")
    return auc


def roc_auc_many(y_true: Any, score: Any, idx: Any) -> np.ndarray:
    """AUC of each resample ``y_true[idx[b]], score[idx[b]]``, for bootstrapping.

    ``idx`` is an integer array of shape (B, M) of indices into the N samples.
    Returns a float array of shape (B,); rows with a single class are ``nan``
    (no warning: that is expected for small bootstrap samples).
    """
    y, s = binary_inputs(y_true, score)
    idx = check_array("idx", idx, 2)
    if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= len(y)):
        raise DataError(f"idx must hold integer indices in [0, {len(y) - 1}]")
    return _auc_rows(y[idx], s[idx])


def average_precision(y_true: Any, score: Any) -> float:
    """Average precision, sum over thresholds of (R_n - R_{n-1}) * P_n.

    Same definition as ``sklearn.metrics.average_precision_score`` (no
    interpolation). ``nan`` with a warning when there are no positives.
    """
    y, s = binary_inputs(y_true, score)
    if not y.any():
        _warn_undefined("average precision")
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall_step = np.diff(np.r_[0, tps]) / tps[-1]
    return float((recall_step * precision).sum())


def confusion_counts(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """K x K matrix of counts; rows are true classes, columns predicted classes."""
    if int(num_classes) < 1:
        raise DataError(f"num_classes must be >= 1, got {num_classes}")
    k = int(num_classes)
    t = check_labels("y_true", check_array("y_true", y_true, 1), k)
    p = check_labels("y_pred", check_array("y_pred", y_pred, 1), k)
    check_same_length("y_true", t, "y_pred", p)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _kappa(cm: np.ndarray, *, quadratic: bool = False) -> float:
    """Cohen's kappa from a confusion matrix, optionally with quadratic weights."""
    k = cm.shape[0]
    n = cm.sum()
    if n == 0:
        return float("nan")
    i, j = np.indices((k, k))
    w = (i - j).astype(np.float64) ** 2 if quadratic else (i != j).astype(np.float64)
    expected = np.outer(cm.sum(1), cm.sum(0)) / n
    return 1.0 - _div((w * cm).sum(), (w * expected).sum())


def _one_vs_rest(cm: np.ndarray, k: int) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV, F1 for class ``k`` of a confusion matrix."""
    tp = int(cm[k, k])
    fn = int(cm[k].sum()) - tp
    fp = int(cm[:, k].sum()) - tp
    tn = int(cm.sum()) - tp - fn - fp
    return {"sensitivity": _div(tp, tp + fn), "specificity": _div(tn, tn + fp),
            "ppv": _div(tp, tp + fp), "npv": _div(tn, tn + fn),
            "f1": _div(2 * tp, 2 * tp + fp + fn), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def _balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes present in y_true (as scikit-learn)."""
    support = cm.sum(1)
    present = support > 0
    return float((np.diag(cm)[present] / support[present]).mean()) if present.any() else float("nan")


# ----------------------------------------------------------------- per task
def binary_metrics(y_true: Any, p_pos: Any, *, threshold: float = 0.5) -> dict[str, Any]:
    """Threshold-free and thresholded metrics for a binary problem.

    ``y_true`` holds 0/1 labels, ``p_pos`` the score of the positive class; a
    sample is predicted positive when ``p_pos >= threshold``.
    """
    y, s = binary_inputs(y_true, p_pos)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        auc, ap = roc_auc(y, s), average_precision(y, s)
    if np.isnan(auc):
        _warn_undefined("ROC AUC" + (" and average precision" if np.isnan(ap) else ""))
    cm = confusion_counts(y, s >= threshold, 2)
    ovr = _one_vs_rest(cm, 1)
    n = len(y)
    return {"auc": auc, "ap": ap, "accuracy": _div(np.trace(cm), n),
            "balanced_accuracy": _balanced_accuracy(cm),
            **{k: ovr[k] for k in ("sensitivity", "specificity", "ppv", "npv", "f1")},
            "kappa": _kappa(cm), **{k: ovr[k] for k in ("tp", "fp", "tn", "fn")},
            "n": n, "prevalence": _div(int(y.sum()), n), "threshold": float(threshold)}


def _ranking_per_class(y: np.ndarray, probs: np.ndarray, names: list[str]) -> tuple[list[float], list[float]]:
    """Per-column one-vs-rest AUC and AP for boolean (N, K) labels; one warning for all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        aucs = [roc_auc(y[:, k], probs[:, k]) for k in range(len(names))]
        aps = [average_precision(y[:, k], probs[:, k]) for k in range(len(names))]
    undefined = [names[k] for k, a in enumerate(aucs) if np.isnan(a)]
    if undefined:
        warnings.warn(f"AUC/AP undefined for {undefined} (positives or negatives missing); "
                      "reported as nan and left out of the macro mean",
                      UndefinedMetricWarning, stacklevel=3)
    return aucs, aps


def multiclass_metrics(y_true: Any, probs: Any, *, class_names: Sequence[str]) -> dict[str, Any]:
    """Metrics for single-label K-class problems; prediction is ``argmax(probs)``.

    ``auc`` is the macro mean of one-vs-rest AUCs (as MedMNIST reports),
    over the classes for which it is defined. ``macro_f1`` averages the classes
    present in y_true or in the predictions (scikit-learn's default).
    """
    y, p, names = multiclass_inputs(y_true, probs, class_names)
    cm = confusion_counts(y, p.argmax(1), len(names))
    aucs, aps = _ranking_per_class(y[:, None] == np.arange(len(names)), p, names)
    per_class: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        ovr = _one_vs_rest(cm, k)
        per_class[name] = {"auc": aucs[k], "ap": aps[k],
                           **{m: ovr[m] for m in ("sensitivity", "specificity", "ppv", "npv", "f1")},
                           "support": int(cm[k].sum())}
    return {"auc": _nanmean(aucs), "accuracy": _div(np.trace(cm), cm.sum()),
            "balanced_accuracy": _balanced_accuracy(cm), "kappa": _kappa(cm),
            "quadratic_weighted_kappa": _kappa(cm, quadratic=True),
            "macro_f1": _nanmean([c["f1"] for c in per_class.values()]),
            "n": len(y), "per_class": per_class, "confusion_matrix": cm.tolist()}


def multilabel_metrics(y_true: Any, probs: Any, *, class_names: Sequence[str],
                       threshold: float = 0.5) -> dict[str, Any]:
    """Metrics for multi-label problems (each of L labels is an independent yes/no).

    ``accuracy`` is the mean per-label accuracy (1 - Hamming loss, as MedMNIST
    reports for ChestMNIST); ``subset_accuracy`` requires all labels right.
    ``auc`` is the macro AUC over labels where it is defined.
    """
    y, p, names = multilabel_inputs(y_true, probs, class_names)
    pred = p >= threshold
    aucs, aps = _ranking_per_class(y, p, names)
    per_label: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        ovr = _one_vs_rest(confusion_counts(y[:, k], pred[:, k], 2), 1)
        per_label[name] = {"auc": aucs[k], "ap": aps[k],
                           **{m: ovr[m] for m in ("sensitivity", "specificity", "ppv", "npv", "f1")},
                           "support": int(y[:, k].sum()), "prevalence": _div(int(y[:, k].sum()), len(y))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        micro = roc_auc(y.ravel(), p.ravel()) if y.size else float("nan")
    macro_auc = _nanmean(aucs)
    hamming = _div(int((pred == y).sum()), y.size)
    return {"auc": macro_auc, "macro_auc": macro_auc, "micro_auc": micro, "macro_ap": _nanmean(aps),
            "accuracy": hamming, "hamming_accuracy": hamming,
            "subset_accuracy": _div(int((pred == y).all(1).sum()), len(y)),
            "macro_f1": _nanmean([c["f1"] for c in per_label.values()]),
            "n": len(y), "threshold": float(threshold), "per_class": per_label}


def compute_metrics(task: str, y_true: Any, probs: Any, *, class_names: Sequence[str],
                    positive_index: int | None = None, threshold: float = 0.5) -> dict[str, Any]:
    """Dispatch to the metrics of ``task`` (binary | multiclass | multilabel).

    For ``binary``, ``probs`` is (N, 2) and ``y_true`` holds class indices;
    ``probs[:, positive_index]`` (default 1) scores the positive class and
    ``y_true == positive_index`` marks positives. The binary result adds
    ``confusion_matrix`` (rows = true class, in ``class_names`` order) and
    ``positive_class``. Every result carries ``task``.
    """
    check_task(task)
    if task == "multiclass":
        return {"task": task, **multiclass_metrics(y_true, probs, class_names=class_names)}
    if task == "multilabel":
        return {"task": task, **multilabel_metrics(y_true, probs, class_names=class_names,
                                                   threshold=threshold)}
    y, p, names, pos = binary_task_inputs(y_true, probs, class_names, positive_index)
    out = binary_metrics(y == pos, p[:, pos], threshold=threshold)
    y_pred = np.where(p[:, pos] >= threshold, pos, 1 - pos)
    return {"task": task, **out, "positive_class": names[pos],
            "confusion_matrix": confusion_counts(y, y_pred, 2).tolist()}


def check_task(task: str) -> str:
    """``task`` if it is one of :data:`TASKS`, else a ConfigError."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {list(TASKS)}." + did_you_mean(task, TASKS))
    return task


def task_auc(task: str, y_true: Any, probs: Any, *, class_names: Sequence[str],
             positive_index: int | None = None) -> float:
    """The ``auc`` of :func:`compute_metrics` alone (inputs as there), without its other metrics or warnings.

    Binary: the AUC of ``probs[:, positive_index]`` (default 1); multiclass and multi-label: the macro mean
    of the one-vs-rest AUCs that are defined (``nan`` when none is). Cheap enough to call thousands of times
    (permutation tests).
    """
    check_task(task)
    if task == "binary":
        y, p, _, pos = binary_task_inputs(y_true, probs, class_names, positive_index)
        return float(_auc_rows((y == pos)[None], p[None, :, pos])[0])
    if task == "multilabel":
        onehot, p, _ = multilabel_inputs(y_true, probs, class_names)
    else:
        y, p, names = multiclass_inputs(y_true, probs, class_names)
        onehot = y[:, None] == np.arange(len(names))
    return _nanmean(_auc_rows(onehot.T, p.T))
