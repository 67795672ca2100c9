"""Bootstrap confidence intervals and DeLong tests for classification metrics.

Resampling (Efron & Tibshirani 1993, *An Introduction to the Bootstrap*, ch. 13;
Carpenter & Bithell 2000, Stat Med 19:1141): :func:`stratified_bootstrap_indices`
draws each resample with replacement *within* each class of ``y_true``, so every
resample keeps the class counts of the data. Multi-label targets (2-D) are
resampled without stratification: a case can carry several labels, so it has no
single stratum (the argmax of a multi-hot row would be arbitrary). Intervals are
percentiles ``alpha/2`` and ``1 - alpha/2`` of the resampled values that are
defined; ``value`` is the plain metric on all cases (:func:`compute_metrics`).

All resamples are scored at once from the multiplicity matrix ``W`` (B, N),
``W[b, i]`` = how often case ``i`` was drawn in resample ``b``: confusion counts
are ``W @ indicator``; AUC (weighted Mann-Whitney U, ties count one half) and AP
come from per-distinct-score positive/negative counts. Resamples are processed
in blocks of 256 only to bound memory.

DeLong: DeLong, DeLong & Clarke-Pearson (1988) Biometrics 44:837, with the fast
midrank algorithm of Sun & Xu (2014) IEEE Signal Process. Lett. 21:1389.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

from ..errors import ConfigError, DataError, did_you_mean
from .classification import UndefinedMetricWarning, check_task, compute_metrics
from .headline import HEADLINE_BY_TASK
from .inputs import binary_inputs

_BLOCK = 256
Scorer = Callable[[np.ndarray], tuple[dict[str, np.ndarray], np.ndarray]]


# ------------------------------------------------------------------ resampling
def check_options(n_resamples: int, alpha: float = 0.05) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer) or n_resamples < 1:
        raise ConfigError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), e.g. 0.05 for a 95% interval; got {alpha!r}")


def _index_blocks(y: np.ndarray, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of (b, N) indices; their concatenation is :func:`stratified_bootstrap_indices`."""
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(y == c) for c in np.unique(y)] if y.ndim == 1 else [np.arange(len(y))]
    for start in range(0, n_resamples, _BLOCK):
        b = min(_BLOCK, n_resamples - start)
        yield np.concatenate([m[rng.integers(0, len(m), size=(b, len(m)))] for m in strata], axis=1)


def stratified_bootstrap_indices(y_true: Any, n_resamples: int = 2000, *, seed: int = 0) -> np.ndarray:
    """Indices (n_resamples, N) of bootstrap resamples drawn within each class of ``y_true``.

    ``y_true`` (N,) holds class labels; each resample holds, per class, as many
    draws (with replacement) from that class as the data has, class after class.
    A 2-D (N, L) multi-label ``y_true`` is resampled without stratification.
    The same ``seed`` always gives the same indices.
    """
    y = np.asarray(y_true)
    if y.ndim not in (1, 2) or len(y) == 0:
        raise DataError(f"expected y_true of shape (N,) or (N, L) with N > 0, got {tuple(y.shape)}")
    check_options(n_resamples)
    return np.concatenate(list(_index_blocks(y, int(n_resamples), seed)), axis=0)


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """Multiplicity matrix (b, n): how often each case occurs in each resample."""
    flat = (idx + n * np.arange(len(idx))[:, None]).ravel()
    return np.bincount(flat, minlength=idx.size).reshape(idx.shape).astype(np.float64)


# ------------------------------------------------------- vectorised metrics
def _ratio(num: Any, den: Any) -> np.ndarray:
    """``num / den`` elementwise, ``nan`` where ``den == 0``."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(a)
    return _ratio(np.where(ok, a, 0.0).sum(1), ok.sum(1))


def _plan(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ascending score order, start of each run of tied scores, and positives in that order."""
    order = np.argsort(s, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(s[order])) + 1]
    return order, starts, y[order].astype(np.float64)


def _ranking(w: np.ndarray, plan: tuple, *, ap: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """AUC (and AP if asked) of each weighted resample, from per-distinct-score counts."""
    order, starts, ypos = plan
    ws = w[:, order]
    if len(starts) == len(order):  # no tied scores: one case per group
        pos = ws * ypos
        neg = ws - pos
    else:
        pos = np.add.reduceat(ws * ypos, starts, axis=1)
        neg = np.add.reduceat(ws, starts, axis=1) - pos
    cneg = np.cumsum(neg, axis=1)
    n_pos, n_neg = pos.sum(1), cneg[:, -1]
    auc = _ratio((pos * (cneg - 0.5 * neg)).sum(1), n_pos * n_neg)
    if not ap:
        return auc, None
    # cases scoring >= each distinct score (sklearn's AP walks scores downwards); exact integer sums
    tps = n_pos[:, None] - np.cumsum(pos, axis=1) + pos
    called = tps + (n_neg[:, None] - cneg + neg)
    precision = np.divide(tps, called, out=np.zeros_like(tps), where=pos > 0)
    return auc, _ratio((pos * precision).sum(1), n_pos)


def binary_scorer(y: np.ndarray, s: np.ndarray, threshold: float, names: Sequence[str]) -> Scorer:
    pred = s >= threshold
    cells = np.stack([y & pred, y & ~pred, ~y & pred, ~y & ~pred], axis=1).astype(np.float64)
    plan = _plan(y, s) if {"auc", "ap"} & set(names) else None

    def score(w: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        tp, fn, fp, tn = (w @ cells).T
        n = tp + fn + fp + tn
        sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
        present = (tp + fn > 0).astype(np.float64) + (tn + fp > 0)
        out = {"accuracy": (tp + tn) / n, "sensitivity": sens, "specificity": spec,
               "balanced_accuracy": _ratio(np.nan_to_num(sens) + np.nan_to_num(spec), present),
               "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
               "kappa": 1 - _ratio(fp + fn, n - ((tp + fn) * (tp + fp) + (tn + fp) * (tn + fn)) / n)}
        if plan is not None:
            out["auc"], out["ap"] = _ranking(w, plan, ap="ap" in names)
        out = {k: out[k] for k in names}
        return out, np.isnan(np.stack(list(out.values()), axis=1)).any(1)

    return score


def _multiclass_scorer(y: np.ndarray, p: np.ndarray, names: Sequence[str]) -> Scorer:
    k = p.shape[1]
    code = y * k + p.argmax(1)
    onehot = (code[:, None] == np.arange(k * k)).astype(np.float64)  # N x K^2
    plans = [_plan(y == c, p[:, c]) for c in range(k)] if "auc" in names else []

    def score(w: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        cm = (w @ onehot).reshape(-1, k, k)
        n = w.sum(1)
        tp = np.diagonal(cm, axis1=1, axis2=2)
        support, predicted = cm.sum(2), cm.sum(1)
        out = {"accuracy": tp.sum(1) / n, "balanced_accuracy": _nanmean_rows(_ratio(tp, support)),
               "kappa": 1 - _ratio(n - tp.sum(1), n - (support * predicted).sum(1) / n),
               "macro_f1": _nanmean_rows(_ratio(2 * tp, support + predicted))}
        bad = np.zeros(len(w), dtype=bool)
        if plans:
            aucs = np.stack([_ranking(w, plan)[0] for plan in plans], axis=1)
            out["auc"], bad = _nanmean_rows(aucs), np.isnan(aucs).any(1)
        out = {m: out[m] for m in names}
        return out, bad | np.isnan(np.stack(list(out.values()), axis=1)).any(1)

    return score


def _multilabel_scorer(y: np.ndarray, p: np.ndarray, names: Sequence[str]) -> Scorer:
    plans = [_plan(y[:, c], p[:, c]) for c in range(p.shape[1])]

    def score(w: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        aucs = np.stack([_ranking(w, plan)[0] for plan in plans], axis=1)
        return {"auc": _nanmean_rows(aucs)}, np.isnan(aucs).any(1)

    return score


def score_resamples(scorers: Sequence[Scorer], y: np.ndarray, n_resamples: int, seed: int
         ) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    """Score every resample (the same ones for each scorer); values and degenerate flags."""
    parts: list[list[tuple[dict[str, np.ndarray], np.ndarray]]] = [[] for _ in scorers]
    for idx in _index_blocks(y, n_resamples, seed):
        w = _weights(idx, len(y))
        for part, scorer in zip(parts, scorers, strict=True):
            part.append(scorer(w))
    values = [{m: np.concatenate([v[m] for v, _ in part]) for m in part[0][0]} for part in parts]
    return values, [np.concatenate([d for _, d in part]) for part in parts]


def percentile_interval(values: np.ndarray, alpha: float) -> dict[str, Any]:
    ok = values[~np.isnan(values)]
    if not len(ok):
        return {"low": float("nan"), "high": float("nan"), "n_valid": 0}
    low, high = np.percentile(ok, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"low": float(low), "high": float(high), "n_valid": len(ok)}


# ------------------------------------------------------------------ public API
def _metric_names(task: str, metrics: Sequence[str] | None) -> tuple[str, ...]:
    check_task(task)
    if metrics is None:
        return HEADLINE_BY_TASK[task]
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    for m in names:
        if m not in HEADLINE_BY_TASK[task]:
            raise ConfigError(f"no bootstrap for metric {m!r} of a {task} task; choose from "
                              f"{list(HEADLINE_BY_TASK[task])}." + did_you_mean(m, HEADLINE_BY_TASK[task]))
    return names


def _scorer(task: str, y_true: Any, probs: Any, positive_index: int | None, threshold: float,
            names: Sequence[str]) -> tuple[Scorer, np.ndarray]:
    """Scorer for already validated inputs (see compute_metrics) and the labels to stratify on."""
    p = np.asarray(probs, dtype=np.float64)
    if task == "binary":
        pos = 1 if positive_index is None else int(positive_index)
        y = np.asarray(y_true).astype(np.int64) == pos
        return binary_scorer(y, p[:, pos], threshold, names), y
    if task == "multiclass":
        y = np.asarray(y_true).astype(np.int64)
        return _multiclass_scorer(y, p, names), y
    y = np.asarray(y_true).astype(bool)
    return _multilabel_scorer(y, p, names), y


def bootstrap_ci(task: str, y_true: Any, probs: Any, *, class_names: Sequence[str],
                 positive_index: int | None = None, threshold: float = 0.5, n_resamples: int = 2000,
                 seed: int = 0, alpha: float = 0.05, metrics: Sequence[str] | None = None) -> dict[str, Any]:
    """Percentile bootstrap CIs of the headline metrics of ``task``.

    Inputs as :func:`compute_metrics`. Returns ``{metric: {"value", "low", "high",
    "n_valid"}}`` (``n_valid``: resamples where the metric is defined) plus
    ``n_resamples``, ``n_degenerate`` (resamples where any reported metric, or
    any per-class AUC of a macro mean, is undefined), ``alpha``, ``method``, ``seed``.
    """
    names = _metric_names(task, metrics)
    check_options(n_resamples, alpha)
    point = compute_metrics(task, y_true, probs, class_names=class_names, positive_index=positive_index,
                            threshold=threshold)
    scorer, y = _scorer(task, y_true, probs, positive_index, threshold, names)
    (values,), (bad,) = score_resamples([scorer], y, int(n_resamples), seed)
    out: dict[str, Any] = {m: {"value": float(point[m]), **percentile_interval(values[m], alpha)} for m in names}
    method = "percentile bootstrap" if task == "multilabel" else "stratified percentile bootstrap"
    return {**out, "n_resamples": int(n_resamples), "n_degenerate": int(bad.sum()), "alpha": float(alpha),
            "method": method, "seed": seed, "n": len(y)}


def _p_value(diffs: np.ndarray, observed: float) -> float:
    """Two-sided bootstrap p: 2 x share of resampled differences at or beyond 0 on the far side."""
    ok = diffs[~np.isnan(diffs)]
    if not len(ok) or math.isnan(observed):
        return float("nan")
    if observed == 0:
        return 1.0
    beyond = (ok <= 0) if observed > 0 else (ok >= 0)
    return float(min(1.0, 2 * beyond.mean()))


def paired_bootstrap_diff(y_true: Any, probs_a: Any, probs_b: Any, *, task: str, class_names: Sequence[str],
                          positive_index: int | None = None, threshold: float = 0.5, n_resamples: int = 2000,
                          seed: int = 0, alpha: float = 0.05,
                          metrics: Sequence[str] = ("auc", "accuracy", "sensitivity", "specificity")
                          ) -> dict[str, Any]:
    """Difference ``b - a`` of two models scored on the same cases, with paired bootstrap CIs.

    Both models are scored on the same resamples. ``p_value`` is two-sided:
    twice the share of resampled differences on the other side of 0 than the
    observed one (0 included), capped at 1 (a percentile-bootstrap test;
    resolution ``2 / n_valid``). ``sensitivity``/``specificity``/... are
    binary-only; unknown names raise :class:`ConfigError`.
    """
    names = _metric_names(task, metrics)
    check_options(n_resamples, alpha)
    kw: dict[str, Any] = {"class_names": class_names, "positive_index": positive_index, "threshold": threshold}
    pa, pb = compute_metrics(task, y_true, probs_a, **kw), compute_metrics(task, y_true, probs_b, **kw)
    if np.shape(probs_a) != np.shape(probs_b):
        raise DataError(f"probs_a has shape {np.shape(probs_a)} but probs_b has {np.shape(probs_b)}")
    sa, y = _scorer(task, y_true, probs_a, positive_index, threshold, names)
    sb, _ = _scorer(task, y_true, probs_b, positive_index, threshold, names)
    (va, vb), (bad_a, bad_b) = score_resamples([sa, sb], y, int(n_resamples), seed)
    out: dict[str, Any] = {}
    for m in names:
        diff, observed = vb[m] - va[m], float(pb[m]) - float(pa[m])
        out[m] = {"a": float(pa[m]), "b": float(pb[m]), "diff": observed, **percentile_interval(diff, alpha),
                  "p_value": _p_value(diff, observed)}
    return {**out, "n_resamples": int(n_resamples), "n_degenerate": int((bad_a | bad_b).sum()),
            "alpha": float(alpha), "method": "paired stratified percentile bootstrap (b - a)",
            "p_value_method": "2 x share of resampled differences on the other side of 0, capped at 1",
            "seed": seed, "n": len(y)}


# ---------------------------------------------------------------------- DeLong
def _delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (M,) and their DeLong covariance (M, M) for M score rows (Sun & Xu 2014, Alg. 2)."""
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        warnings.warn("DeLong AUC is undefined (only one class present); reported as nan",
                      UndefinedMetricWarning, stacklevel=3)
        return np.full(len(scores), np.nan), np.full((len(scores),) * 2, np.nan)
    x, z = scores[:, y], scores[:, ~y]
    tx, tz = rankdata(x, axis=1), rankdata(z, axis=1)  # midranks within each class
    txz = rankdata(np.concatenate([x, z], axis=1), axis=1)  # and over all cases
    aucs = (txz[:, :m].sum(1) - m * (m + 1) / 2) / (m * n)
    v10 = (txz[:, :m] - tx) / n  # structural components of the positives
    v01 = 1.0 - (txz[:, m:] - tz) / m  # and of the negatives
    if m < 2 or n < 2:
        return aucs, np.full((len(scores),) * 2, np.nan)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_auc_ci(y_true: Any, score: Any, *, alpha: float = 0.05) -> dict[str, float]:
    """ROC AUC with DeLong's standard error and Wald interval ``auc ± z * se``, clipped to [0, 1].

    ``nan`` (with a warning) when a class is missing; ``se`` is ``nan`` with fewer
    than two cases in a class.
    """
    check_options(1, alpha)
    y, s = binary_inputs(y_true, score)
    aucs, cov = _delong(y, s[None])
    auc, se = float(aucs[0]), float(np.sqrt(cov[0, 0]))
    half = norm.ppf(1 - alpha / 2) * se
    return {"value": auc, "low": max(0.0, float(auc - half)), "high": min(1.0, float(auc + half)), "se": se,
            "alpha": float(alpha), "method": "DeLong"}


def delong_test(y_true: Any, score_a: Any, score_b: Any) -> dict[str, float]:
    """DeLong's test of two correlated AUCs on the same cases: ``diff = auc_b - auc_a``, two-sided ``p``."""
    y, sa = binary_inputs(y_true, score_a)
    _, sb = binary_inputs(y_true, score_b)
    aucs, cov = _delong(y, np.stack([sa, sb]))
    diff = float(aucs[1] - aucs[0])
    se = float(np.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
    # se == 0: identical (or rank-identical) scores, so the difference has no variance
    z = diff / se if se > 0 or math.isnan(se) else 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se": se, "z": float(z),
            "p": float(2 * norm.sf(abs(z)))}
