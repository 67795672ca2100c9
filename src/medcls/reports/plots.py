"""Evaluation plots written as PNG files: ROC, precision-recall, confusion matrix, history.

Every function takes the output path first, writes the figure, closes it and
returns the path. Matplotlib runs on the non-interactive Agg backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..errors import ConfigError, DataError, did_you_mean
from ..metrics.classification import TASKS
from ..metrics.headline import headline_subset
from .kit import fmt, fmt_percent, fmt_threshold, row_fractions

_DPI = 120


def _curves(y_true: Any, probs: Any, *, task: str, class_names: Sequence[str],
            positive_index: int | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, binary labels, scores) for each curve to draw, one-vs-rest for multi-class."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {list(TASKS)}."
                          + did_you_mean(task, TASKS))
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true)
    names = [str(c) for c in class_names]
    if p.ndim != 2 or p.shape[1] != len(names):
        raise DataError(f"expected probs of shape (N, {len(names)}), got {tuple(p.shape)}")
    if task == "multilabel":
        if y.shape != p.shape:
            raise DataError(f"expected y_true of shape {tuple(p.shape)}, got {tuple(y.shape)}")
        return [(names[k], y[:, k].astype(bool), p[:, k]) for k in range(len(names))]
    if y.shape != (len(p),):
        raise DataError(f"expected y_true of shape ({len(p)},), got {tuple(y.shape)}")
    if task == "binary":
        pos = 1 if positive_index is None else int(positive_index)
        if not 0 <= pos < len(names):
            raise DataError(f"positive_index {positive_index} is out of range for {len(names)} classes")
        return [(names[pos], y == pos, p[:, pos])]
    return [(names[k], y == k, p[:, k]) for k in range(len(names))]


def _colors(n: int) -> list[Any]:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _legend(ax: Any, n: int) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right" if n <= 6 else "center left",
                  bbox_to_anchor=None if n <= 6 else (1.02, 0.5), fontsize=8 if n > 6 else 9)


def _mark_points(ax: Any, y: np.ndarray, s: np.ndarray, thresholds: Mapping[str, float] | None, kind: str) -> None:
    """Mark binary operating points (name -> threshold) on a ROC or PR axis."""
    if not thresholds or y.all() or not y.any():
        return
    markers = "os^vDP*X"
    for (name, t), m in zip(thresholds.items(), markers * 3, strict=False):
        pred = s >= t
        tp, fp = float((pred & y).sum()), float((pred & ~y).sum())
        sens, fpr = tp / y.sum(), fp / (~y).sum()
        if kind == "roc":
            ax.plot(fpr, sens, m, ms=7, mfc="none", mew=1.6, label=f"{name} (t={fmt_threshold(t, 3)})")
        elif tp + fp > 0:
            ax.plot(sens, tp / (tp + fp), m, ms=7, mfc="none", mew=1.6, label=f"{name} (t={fmt_threshold(t, 3)})")


def plot_roc(path: str | Path, y_true: Any, probs: Any, *, task: str,
             class_names: Sequence[str], positive_index: int | None = None,
             thresholds: Mapping[str, float] | None = None, band: Mapping[str, Any] | None = None) -> Path:
    """ROC curve(s) with AUC in the legend and the chance diagonal; binary: ``band``
    (:func:`medcls.metrics.roc_band`) shaded as the curve's confidence band.

    Binary: one curve for the positive class; multiclass: one-vs-rest per
    class; multilabel: one per label. Curves with a single class present are skipped.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    curves = _curves(y_true, probs, task=task, class_names=class_names, positive_index=positive_index)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for (name, y, s), color in zip(curves, _colors(len(curves)), strict=True):
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        if band is not None and task == "binary":
            ax.fill_between(band["fpr"], band["tpr_low"], band["tpr_high"], color=color, alpha=0.2, lw=0,
                            label=f"{fmt_percent(1 - band['alpha'])} band ({band['n_resamples']} bootstrap resamples)")
        ax.plot(fpr, tpr, color=color, lw=1.6, label=f"{name} (AUC {fmt(roc_auc_score(y, s))})")
        if task == "binary":
            _mark_points(ax, y, s, thresholds, "roc")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)", title="ROC curve")
    ax.grid(alpha=0.3)
    _legend(ax, len(curves) + 1)
    return _save(fig, path)


def plot_pr(path: str | Path, y_true: Any, probs: Any, *, task: str,
            class_names: Sequence[str], positive_index: int | None = None,
            thresholds: Mapping[str, float] | None = None) -> Path:
    """Precision-recall curve(s) with AP in the legend and the prevalence baseline.

    The baseline (precision of a random classifier) is drawn dotted in the
    colour of its curve. Curves without positives are skipped.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    curves = _curves(y_true, probs, task=task, class_names=class_names, positive_index=positive_index)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for (name, y, s), color in zip(curves, _colors(len(curves)), strict=True):
        if not y.any():
            continue
        precision, recall, _ = precision_recall_curve(y, s)
        prevalence = float(y.mean())
        ax.step(recall, precision, where="post", color=color, lw=1.6,
                label=f"{name} (AP {fmt(average_precision_score(y, s))}, prev. {fmt(prevalence, 2)})")
        ax.axhline(prevalence, ls=":", color=color, lw=1, alpha=0.7)
        if task == "binary":
            _mark_points(ax, y, s, thresholds, "pr")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall (sensitivity)",
           ylabel="Precision (PPV)", title="Precision-recall curve")
    ax.grid(alpha=0.3)
    _legend(ax, len(curves))
    return _save(fig, path)


def plot_confusion(path: str | Path, cm: Any, class_names: Sequence[str], *,
                   normalize: bool = False) -> Path:
    """Confusion matrix heat map (rows = true class), every cell annotated with its count.

    With ``normalize=True`` colours and the first number show the row fraction
    (recall per class), with the count in brackets below.
    """
    counts = np.asarray(cm)
    k = len(class_names)
    if counts.shape != (k, k):
        raise DataError(f"expected cm of shape ({k}, {k}) for {k} class names, got {tuple(counts.shape)}")
    values = row_fractions(counts) if normalize else counts
    size = max(4.0, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(int(counts.max()), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    threshold = (1 if normalize else max(int(counts.max()), 1)) / 2
    fontsize = 9 if k <= 10 else 7
    for i in range(k):
        for j in range(k):
            text = f"{values[i, j]:.2f}\n({int(counts[i, j])})" if normalize else str(int(counts[i, j]))
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="white" if values[i, j] > threshold else "black")
    ax.set_xticks(range(k), [str(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticks(range(k), [str(c) for c in class_names])
    ax.set(xlabel="Predicted class", ylabel="True class",
           title="Confusion matrix" + (" (row-normalised)" if normalize else ""))
    return _save(fig, path)


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for the rows where ``key`` holds a finite number."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            xs.append(float(row.get("epoch", i)))
            ys.append(float(v))
    return xs, ys


# the validation metrics of the history figure (rates only: counts such as val_tp would flatten the axis)
HISTORY_RATES = headline_subset("auc", "ap", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1",
                                "kappa", "macro_f1")


def history_rates(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``val_<rate>`` keys of :data:`HISTORY_RATES` that ``rows`` (history.csv records) hold numbers for."""
    return [f"val_{k}" for k in HISTORY_RATES if any(isinstance(r.get(f"val_{k}"), float) for r in rows)]


def plot_history(path: str | Path, history_rows: Sequence[Mapping[str, Any]], *,
                 metrics: Sequence[str] | None = None) -> Path:
    """Training curves: train/val loss (left) and validation metrics (right) per epoch.

    ``history_rows`` is a list of dicts with ``epoch``, ``train_loss``,
    ``val_loss`` and metric keys such as ``val_auc``. ``metrics`` picks the
    keys for the right panel (default: every numeric ``val_*`` key except
    ``val_loss``). Missing or non-finite values are skipped.
    """
    rows = list(history_rows)
    if not rows:
        raise DataError("history is empty: nothing to plot")
    if metrics is None:
        keys = {k for row in rows for k in row if k.startswith("val_") and k != "val_loss"}
        # rates only: counts such as val_tp or val_n would flatten every curve on a shared axis
        metrics = sorted(k for k in keys if _series(rows, k)[0] and all(0 <= v <= 1 for v in _series(rows, k)[1]))
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, style in (("train_loss", "-o"), ("val_loss", "-s")):
        xs, ys = _series(rows, key)
        if xs:
            ax_loss.plot(xs, ys, style, ms=3, label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    for key, color in zip(metrics, _colors(len(metrics)), strict=True):
        xs, ys = _series(rows, key)
        if xs:
            ax_metric.plot(xs, ys, "-o", ms=3, color=color, label=key)
    ax_metric.set(xlabel="epoch", ylabel="value", title="Validation metrics")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path)


def plot_reliability(path: str | Path, y_true: Any, probs_before: Any, probs_after: Any, *, task: str,
                     n_bins: int = 15) -> Path:
    """Reliability diagram (top-label confidence vs accuracy) before and after temperature scaling."""
    from ..metrics.calibration import expected_calibration_error, reliability_curve

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    y = np.asarray(y_true)
    for label, p, color in (("before", probs_before, "tab:red"), ("after", probs_after, "tab:blue")):
        p = np.asarray(p)
        if task == "multilabel":  # pool all labels as independent binary predictions
            yy, pp = y.reshape(-1).astype(int), np.stack([1 - p.reshape(-1), p.reshape(-1)], 1)
        else:
            yy, pp = y, p
        curve = reliability_curve(yy, pp, n_bins=n_bins)
        conf, acc, cnt = (np.asarray(curve[k], dtype=float) for k in ("confidence", "accuracy", "count"))
        keep = cnt > 0
        ece = expected_calibration_error(yy, pp, n_bins=n_bins)
        ax.plot(conf[keep], acc[keep], "-o", ms=4, color=color, label=f"{label} (ECE {fmt(ece)})")
    # how many cases each bin of the calibrated model holds: sparse bins are noisy
    edges = np.linspace(0, 1, n_bins + 1)
    counts = ax.twinx()
    counts.bar((edges[:-1] + edges[1:]) / 2, cnt, width=0.9 / n_bins, color="tab:blue", alpha=0.15)
    for x, c in zip((edges[:-1] + edges[1:]) / 2, cnt, strict=True):
        if c:
            counts.text(x, c, f"{int(c)}", ha="center", va="bottom", fontsize=7, color="tab:blue")
    counts.set_ylim(0, max(float(cnt.max()), 1) * 4)
    counts.set_ylabel("cases per bin (after)", fontsize=9, color="tab:blue")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Confidence", ylabel="Accuracy",
           title="Reliability diagram (temperature scaling)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    return _save(fig, path)


def plot_decision_curve(path: str | Path, curve: Mapping[str, Any], *, positive: str,
                        thresholds: Mapping[str, float] | None = None) -> Path:
    """Net benefit vs threshold probability (:func:`medcls.metrics.net_benefit`), with treat-all and
    treat-none, and the operating points marked."""
    t, model, everyone = (np.asarray(curve[k]) for k in ("thresholds", "model", "treat_all"))
    prev = float(curve["prevalence"])
    fig, ax = plt.subplots(figsize=(6, 4.6))
    ax.plot(t, model, color="tab:blue", lw=1.8, label="model")
    ax.plot(t, everyone, color="tab:grey", lw=1.2, ls="--", label=f"treat all (prevalence {fmt(prev, 2)})")
    ax.axhline(0, color="black", lw=1, label="treat none")
    for (name, th), m in zip((thresholds or {}).items(), "os^vDP*X" * 3, strict=False):
        if 0 < th < 1:
            ax.plot(th, np.interp(th, t, model), m, ms=7, mfc="none", mew=1.5,
                    label=f"{name} (t={fmt_threshold(th, 3)})")
    ax.set(xlim=(0, 1), ylim=(min(-0.05, float(np.min(model)) - 0.02), max(prev, float(np.max(model))) + 0.05),
           xlabel=f"Threshold probability of {positive} (risk at which one would act)", ylabel="Net benefit",
           title="Decision curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_smoothed_calibration(path: str | Path, curves: Mapping[str, Mapping[str, Any]]) -> Path:
    """Smoothed calibration curves (observed against predicted risk, lowess) with their bootstrap bands, one per
    entry of ``curves`` (``{label: {"predicted", "observed", "low", "high"}}``)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for (label, c), color in zip(curves.items(), _colors(len(curves)), strict=True):
        x = np.asarray(c["predicted"])
        ax.plot(x, c["observed"], color=color, lw=1.8, label=label)
        if c.get("low") is not None:
            ax.fill_between(x, c["low"], c["high"], color=color, alpha=0.15)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Predicted risk", ylabel="Observed risk (lowess)",
           title="Smoothed calibration curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    return _save(fig, path)
