"""Curves for clinical reading of a binary score: decision-curve analysis (net benefit) and a bootstrap
confidence band for the ROC curve. Pure functions of labels and scores."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError


def _binary(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(y_true).astype(bool).ravel(), np.asarray(score, dtype=np.float64).ravel()
    if len(y) != len(s) or len(y) == 0:
        raise DataError(f"expected as many labels as scores (> 0), got {len(y)} and {len(s)}")
    return y, s


def net_benefit(y_true: Any, score: Any, thresholds: Any = None) -> dict[str, Any]:
    """Decision-curve analysis (Vickers & Elkin, 2006): the net benefit of treating cases with
    ``score >= t``, ``TP/n - FP/n * t / (1 - t)``, for each threshold probability ``t`` (default
    0.01 ... 0.99), beside treating everyone (``prev - (1 - prev) * t / (1 - t)``) and no one (0).
    Meaningful for calibrated probabilities: ``t`` is the risk at which one would treat."""
    y, s = _binary(y_true, score)
    t = np.round(np.arange(0.01, 1.0, 0.01), 2) if thresholds is None else np.asarray(thresholds, np.float64)
    if np.any((t <= 0) | (t >= 1)):
        raise DataError("decision-curve thresholds must lie strictly between 0 and 1")
    n, prev, odds = len(y), float(y.mean()), t / (1 - t)
    pred = s[None, :] >= t[:, None]
    tp, fp = (pred & y).sum(1) / n, (pred & ~y).sum(1) / n
    return {"thresholds": t.tolist(), "model": (tp - fp * odds).tolist(),
            "treat_all": (prev - (1 - prev) * odds).tolist(), "treat_none": [0.0] * len(t),
            "prevalence": prev, "n": n}


def _resample_counts(pos: np.ndarray, neg: np.ndarray, n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(B, n) multiplicity of each case in ``n_resamples`` stratified bootstrap resamples (cases drawn with
    replacement within each class; the same draws, in the same order, as one ``rng.choice`` per class and resample)."""
    rng = np.random.default_rng(seed)
    idx = np.empty((n_resamples, len(pos) + len(neg)), dtype=np.int64)
    for b in range(n_resamples):
        idx[b] = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
    rows = np.arange(n_resamples)[:, None] * n
    return np.bincount((rows + idx).ravel(), minlength=n_resamples * n).reshape(n_resamples, n)


def roc_band(y_true: Any, score: Any, *, n_resamples: int = 500, seed: int = 0, alpha: float = 0.05,
             grid: int = 101) -> dict[str, Any]:
    """Pointwise ``1 - alpha`` band of the ROC curve: the true positive rate at each false positive rate of
    a fixed grid, over stratified bootstrap resamples (cases resampled within each class).

    Each resample's ROC curve is built from case multiplicities over the scores sorted once (the points
    scikit-learn's ``roc_curve`` gives, plus collinear ones that do not change the interpolation), so the
    resamples cost one cumulative sum instead of one ``roc_curve`` call each."""
    y, s = _binary(y_true, score)
    if y.all() or not y.any():
        raise DataError("a ROC band needs both classes")
    fpr_grid = np.linspace(0, 1, grid)
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    ends = np.r_[np.flatnonzero(np.diff(ss) != 0), len(ss) - 1]  # last case of each distinct threshold
    rank = np.empty(len(s), dtype=np.int64)
    rank[order] = np.arange(len(s))
    counts = _resample_counts(rank[np.flatnonzero(y)], rank[np.flatnonzero(~y)], len(s), n_resamples, seed)
    zero = np.zeros((n_resamples, 1))
    tpr = np.hstack([zero, np.cumsum(counts * ys, axis=1)[:, ends] / y.sum()])
    fpr = np.hstack([zero, np.cumsum(counts * ~ys, axis=1)[:, ends] / (~y).sum()])
    tprs = np.stack([np.interp(fpr_grid, f, t) for f, t in zip(fpr, tpr, strict=True)])
    lo, hi = np.quantile(tprs, [alpha / 2, 1 - alpha / 2], axis=0)
    return {"fpr": fpr_grid.tolist(), "tpr_low": lo.tolist(), "tpr_high": hi.tolist(),
            "n_resamples": n_resamples, "alpha": alpha, "method": "stratified bootstrap, pointwise percentile"}
