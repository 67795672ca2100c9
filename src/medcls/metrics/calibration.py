"""Calibration metrics and temperature scaling as pure numpy/scipy functions.

Shapes accepted by the metric functions (``probs`` are probabilities in [0, 1]):

* binary: ``y_true`` (N,) 0/1 with ``probs`` (N,) = P(positive), or class
  indices with ``probs`` (N, 2);
* multiclass: ``y_true`` (N,) class indices with ``probs`` (N, K);
* multi-label: ``y_true`` and ``probs`` both (N, L); every (case, label) pair is
  one binary decision, and results average over all pairs.

ECE/MCE are *top-label* (Guo et al. 2017, "On calibration of modern neural
networks", ICML; Naeini et al. 2015, AAAI): confidence is the probability of
the predicted class (``argmax`` for (N, K); ``p >= 0.5`` predicts positive for
binary (N,) and multi-label scores, so confidence is ``max(p, 1 - p)``). Bins
are ``n_bins`` equal-width intervals ``[lo, hi)`` over [0, 1], the last one
closed; ECE = sum_b n_b / N * |accuracy_b - confidence_b| (L1), as torchmetrics'
``MulticlassCalibrationError(norm="l1")``. Note torchmetrics' *binary* ECE uses
P(positive) instead; ours equals its multiclass ECE on ``[1 - p, p]``.

Brier (Brier 1950): binary (N,) or (N, 2) gives the positive-class Brier score
``mean((p - y)^2)`` as ``sklearn.metrics.brier_score_loss``; K > 2 classes the
original multi-class form ``mean_i sum_k (p_ik - [y_i = k])^2``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax

from ..errors import ConfigError, DataError, MedclsError
from .classification import check_task
from .inputs import check_array, check_labels, check_same_length, check_scores

_EPS = 1e-15


class NotFittedError(MedclsError, ValueError, AttributeError):
    """An estimator was used before ``fit`` (same contract as scikit-learn's)."""


# --------------------------------------------------------------------- inputs
def _inputs(y_true: Any, probs: Any) -> tuple[str, np.ndarray, np.ndarray]:
    """Kind ("binary" | "multiclass" | "multilabel"), validated labels and probabilities."""
    p = check_scores("probs", np.asarray(probs))
    y = np.asarray(y_true)
    if p.ndim == 1:
        kind, y = "binary", check_labels("y_true", check_array("y_true", y, 1), 2)
    elif p.ndim == 2 and y.ndim == 2:
        kind, y = "multilabel", check_labels("y_true", check_array("y_true", y, 2, p.shape[1]), 2)
    elif p.ndim == 2 and p.shape[1] >= 2:
        kind, y = "multiclass", check_labels("y_true", check_array("y_true", y, 1), p.shape[1])
    else:
        raise DataError(f"expected probs of shape (N,), (N, K>=2) or (N, L) with y_true (N, L); "
                        f"got probs {p.shape} and y_true {y.shape}")
    check_same_length("y_true", y, "probs", p)
    if p.min() < 0 or p.max() > 1:
        raise DataError(f"probs must lie in [0, 1], got values in [{p.min():.3g}, {p.max():.3g}]; "
                        "pass probabilities, not logits")
    return kind, y, p


def _top_label(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Confidence of the predicted class and whether that prediction is right, per decision."""
    kind, y, p = _inputs(y_true, probs)
    if kind == "multiclass":
        pred = p.argmax(1)
        return p[np.arange(len(p)), pred], (pred == y).astype(np.float64)
    p, y = p.ravel(), y.ravel()
    return np.maximum(p, 1 - p), ((p >= 0.5) == (y == 1)).astype(np.float64)


def _binned(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin count, summed confidence and summed correctness."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ConfigError(f"n_bins must be a positive integer, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    return (np.bincount(b, minlength=n_bins), np.bincount(b, conf, minlength=n_bins),
            np.bincount(b, correct, minlength=n_bins))


# -------------------------------------------------------------------- metrics
def expected_calibration_error(y_true: Any, probs: Any, *, n_bins: int = 15) -> float:
    """Top-label expected calibration error (L1, equal-width bins; see module doc)."""
    count, conf, acc = _binned(*_top_label(y_true, probs), n_bins)
    return float(np.abs(acc - conf).sum() / count.sum())


def max_calibration_error(y_true: Any, probs: Any, *, n_bins: int = 15) -> float:
    """Largest ``|accuracy - confidence|`` over the non-empty bins (top-label)."""
    count, conf, acc = _binned(*_top_label(y_true, probs), n_bins)
    ok = count > 0
    return float((np.abs(acc[ok] - conf[ok]) / count[ok]).max())


def reliability_curve(y_true: Any, probs: Any, *, n_bins: int = 15) -> dict[str, list]:
    """Per-bin mean confidence and accuracy (``nan`` for empty bins) for a reliability diagram."""
    count, conf, acc = _binned(*_top_label(y_true, probs), n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {"bin_lower": edges[:-1].tolist(), "bin_upper": edges[1:].tolist(),
            "confidence": np.where(count > 0, conf / np.maximum(count, 1), np.nan).tolist(),
            "accuracy": np.where(count > 0, acc / np.maximum(count, 1), np.nan).tolist(),
            "count": count.astype(int).tolist()}


def brier_score(y_true: Any, probs: Any) -> float:
    """Brier score, lower is better (positive-class for binary, summed over classes for K > 2)."""
    kind, y, p = _inputs(y_true, probs)
    if kind == "multiclass" and p.shape[1] > 2:
        return float(((p - (y[:, None] == np.arange(p.shape[1]))) ** 2).sum(1).mean())
    if kind == "multiclass":  # (N, 2): P(class 1) against y == 1
        p = p[:, 1]
    return float(((p - y) ** 2).mean())


def negative_log_likelihood(y_true: Any, probs: Any) -> float:
    """Mean negative log-likelihood (cross-entropy; binary cross-entropy per label for
    binary (N,) and multi-label). Probabilities are clipped to [1e-15, 1 - 1e-15]."""
    kind, y, p = _inputs(y_true, probs)
    p = np.clip(p, _EPS, 1 - _EPS)
    if kind == "multiclass":
        return float(-np.log(p[np.arange(len(p)), y]).mean())
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


# ---------------------------------------------------------- temperature scaling
def _sigmoid_task(task: str, z: np.ndarray) -> bool:
    """Whether logits are per-label sigmoid logits (multi-label, or a single binary logit)."""
    return task == "multilabel" or (task == "binary" and z.ndim == 1)


def _logits(task: str, logits: Any) -> np.ndarray:
    z = check_scores("logits", np.asarray(logits))
    ok = (z.ndim == 1 and task == "binary") or (z.ndim == 2 and (task == "multilabel" or z.shape[1] >= 2))
    if not ok or (task == "binary" and z.ndim == 2 and z.shape[1] != 2) or len(z) == 0:
        expected = {"binary": "(N,) or (N, 2)", "multiclass": "(N, K)", "multilabel": "(N, L)"}[task]
        raise DataError(f"expected {task} logits of shape {expected}, got {z.shape}")
    return z


def _probs(task: str, z: np.ndarray, temperature: float) -> np.ndarray:
    return expit(z / temperature) if _sigmoid_task(task, z) else softmax(z / temperature, axis=1)


def _nll_logits(task: str, z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean NLL of ``z / temperature``, computed stably from logits."""
    z = z / temperature
    if _sigmoid_task(task, z):
        return float((np.logaddexp(0.0, z) - y * z).mean())
    return float(-log_softmax(z, axis=1)[np.arange(len(z)), y].mean())


class TemperatureScaler:
    """Temperature scaling (Guo et al. 2017): ``probs = softmax(logits / T)``, one ``T > 0``.

    ``fit`` minimises the mean NLL over ``log T`` (bounded Brent search, scipy)
    on held-out (validation) logits. ``task="multilabel"`` (and binary with a
    single (N,) logit) uses ``sigmoid(logits / T)`` with one ``T`` for all labels.
    Learned attributes: ``temperature_``, ``nll_before_``, ``nll_after_``.
    """

    def __init__(self, *, task: str = "multiclass", bounds: tuple[float, float] = (1e-2, 1e2)) -> None:
        self.task = check_task(task)
        if not 0 < bounds[0] < bounds[1] < math.inf:
            raise ConfigError(f"bounds must satisfy 0 < low < high < inf, got {bounds}")
        self.bounds = bounds

    def _labels(self, z: np.ndarray, y_true: Any) -> np.ndarray:
        y = np.asarray(y_true)
        if self.task == "multilabel":
            y = check_labels("y_true", check_array("y_true", y, 2, z.shape[1]), 2)
        else:
            y = check_labels("y_true", check_array("y_true", y, 1), 2 if z.ndim == 1 else z.shape[1])
        check_same_length("y_true", y, "logits", z)
        return y

    def fit(self, logits: Any, y_true: Any) -> TemperatureScaler:
        """Fit ``temperature_`` on validation ``logits`` and labels; returns ``self``."""
        z = _logits(self.task, logits)
        y = self._labels(z, y_true)
        lo, hi = np.log(self.bounds)
        res = minimize_scalar(lambda t: _nll_logits(self.task, z, y, math.exp(t)), bounds=(lo, hi),
                              method="bounded", options={"xatol": 1e-6})
        if min(res.x - lo, hi - res.x) < 1e-3:
            warnings.warn(f"temperature hit the search bound {self.bounds} (separable or degenerate "
                          "logits?); widen `bounds` if this is expected", RuntimeWarning, stacklevel=2)
        self.temperature_ = float(math.exp(res.x))
        self.n_features_in_ = 1 if z.ndim == 1 else z.shape[1]
        self.nll_before_ = _nll_logits(self.task, z, y, 1.0)
        self.nll_after_ = float(res.fun)
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities ``softmax(logits / T)`` (or ``sigmoid`` for per-label logits)."""
        if not hasattr(self, "temperature_"):
            raise NotFittedError("This TemperatureScaler instance is not fitted yet. Call 'fit' with "
                                 "validation logits and labels before using 'transform'.")
        z = _logits(self.task, logits)
        if (1 if z.ndim == 1 else z.shape[1]) != self.n_features_in_:
            raise DataError(f"logits have {1 if z.ndim == 1 else z.shape[1]} columns but the scaler "
                            f"was fitted on {self.n_features_in_}")
        return _probs(self.task, z, self.temperature_)

    predict_proba = transform

    def __repr__(self) -> str:
        fitted = f", temperature_={self.temperature_:.4g}" if hasattr(self, "temperature_") else ""
        return f"TemperatureScaler(task={self.task!r}{fitted})"


def _summary(y: Any, probs: np.ndarray, n_bins: int) -> dict[str, float]:
    return {"ece": expected_calibration_error(y, probs, n_bins=n_bins),
            "mce": max_calibration_error(y, probs, n_bins=n_bins),
            "brier": brier_score(y, probs), "nll": negative_log_likelihood(y, probs)}


def calibration_report(y_true: Any, logits: Any, *, task: str, temperature: float | None = None,
                       n_bins: int = 15) -> dict[str, Any]:
    """ECE, MCE, Brier and NLL of ``logits`` before and after temperature scaling.

    Pass the ``temperature`` fitted on validation data when reporting on a test
    split; with ``None`` it is fitted on these same cases, which flatters the
    "after" numbers (``temperature_source`` says which).
    """
    z = _logits(check_task(task), logits)
    if temperature is None:
        temperature, source = TemperatureScaler(task=task).fit(z, y_true).temperature_, "fitted on these data"
    elif not (isinstance(temperature, int | float) and 0 < temperature < math.inf):
        raise ConfigError(f"temperature must be a positive finite number, got {temperature!r}")
    else:
        source = "given"
    y = TemperatureScaler(task=task)._labels(z, y_true)
    return {"task": task, "n": len(z), "n_bins": n_bins, "temperature": float(temperature),
            "temperature_source": source, "before": _summary(y, _probs(task, z, 1.0), n_bins),
            "after": _summary(y, _probs(task, z, float(temperature)), n_bins)}
