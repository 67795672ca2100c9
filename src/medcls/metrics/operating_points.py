"""Decision thresholds chosen on validation data and evaluated on another split.

A case is called positive when ``p_pos >= threshold`` (as :func:`binary_metrics`).
Candidate thresholds are the distinct validation scores, so every rule is exact
on the data it was chosen on; ties in a rule's criterion go to the higher
threshold (fewer positive calls). Rules:

* ``default``: 0.5;
* ``youden``: maximises J = sensitivity + specificity - 1 (Youden 1950, Cancer 3:32);
* ``max_f1``: maximises F1;
* ``target_sensitivity``: the highest threshold with sensitivity >= target
  (rule-out: as few positive calls as allowed);
* ``target_specificity``: the lowest threshold with specificity >= target
  (just above the highest score if no score reaches the target).

Choosing on validation and reporting on test (:func:`apply_thresholds`, with
stratified bootstrap CIs from :mod:`.bootstrap`) avoids the optimism of tuning
a threshold on the cases it is reported on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .bootstrap import _binary_scorer, _check_options, _interval, _run
from .classification import _binary_inputs, binary_metrics

_VAL_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1")
_CI_METRICS = ("sensitivity", "specificity", "ppv", "npv")


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores in descending order with true/false positives when calling ``s >= t``."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]  # last case of each distinct score
    tp = np.cumsum(y[order])[last].astype(np.float64)
    return s_sorted[last], tp, (last + 1) - tp


def _check_target(name: str, value: float) -> float:
    if not 0 < value <= 1:
        raise ConfigError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def choose_thresholds(y_true: Any, p_pos: Any, *, target_sensitivity: float = 0.95,
                      target_specificity: float = 0.95) -> dict[str, Any]:
    """Operating points chosen on validation labels ``y_true`` (0/1) and scores ``p_pos``.

    Returns ``{rule: {"threshold", "rule", "val": {sensitivity, specificity, ppv,
    npv, f1}}}`` for the rules in the module doc, plus provenance ``chosen_on``,
    ``n``, ``n_positive``, ``prevalence`` and ``targets``. Needs both classes.
    """
    y, s = _binary_inputs(y_true, p_pos)
    t_sens = _check_target("target_sensitivity", target_sensitivity)
    t_spec = _check_target("target_specificity", target_specificity)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"choosing thresholds needs positives and negatives, got {n_pos} positive(s) "
                        f"and {n_neg} negative(s)")
    thr, tp, fp = _curve(y, s)
    sens, spec = tp / n_pos, 1 - fp / n_neg
    f1 = 2 * tp / (tp + fp + n_pos)
    ok_sens = np.flatnonzero(sens >= t_sens - 1e-12)  # non-empty: the lowest score gives sensitivity 1
    ok_spec = np.flatnonzero(spec >= t_spec - 1e-12)  # a prefix (specificity falls as t falls)
    t_spec_thr = thr[ok_spec[-1]] if len(ok_spec) else float(np.nextafter(thr[0], np.inf))
    chosen = {
        "default": (0.5, "fixed threshold 0.5"),
        "youden": (thr[np.argmax(sens + spec - 1)], "max Youden J = sensitivity + specificity - 1"),
        "max_f1": (thr[np.argmax(f1)], "max F1"),
        "target_sensitivity": (thr[ok_sens[0]], f"highest threshold with sensitivity >= {t_sens:g}"),
        "target_specificity": (t_spec_thr, f"lowest threshold with specificity >= {t_spec:g}"),
    }
    out: dict[str, Any] = {}
    for name, (t, rule) in chosen.items():
        m = binary_metrics(y, s, threshold=float(t))
        out[name] = {"threshold": float(t), "rule": rule, "val": {k: m[k] for k in _VAL_METRICS}}
    return {**out, "chosen_on": "val", "n": len(y), "n_positive": n_pos, "prevalence": n_pos / len(y),
            "targets": {"sensitivity": t_sens, "specificity": t_spec}}


def _parse_thresholds(thresholds: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """``{name: (threshold, rule)}`` from :func:`choose_thresholds` output or ``{name: float}``."""
    if not isinstance(thresholds, dict) or not thresholds:
        raise ConfigError("thresholds must be a non-empty dict, either the result of choose_thresholds "
                          f"or {{name: threshold}}; got {thresholds!r}")
    entries = {k: v for k, v in thresholds.items() if isinstance(v, dict) and "threshold" in v}
    if entries:
        parsed = {k: (v["threshold"], str(v.get("rule", ""))) for k, v in entries.items()}
    else:
        parsed = {k: (v, "given") for k, v in thresholds.items()}
    for k, (t, _) in parsed.items():
        if isinstance(t, bool) or not isinstance(t, int | float | np.number) or not np.isfinite(t):
            raise ConfigError(f"threshold {k!r} must be a finite number, got {t!r}")
    return {k: (float(t), rule) for k, (t, rule) in parsed.items()}


def apply_thresholds(y_true: Any, p_pos: Any, thresholds: dict[str, Any], *, n_resamples: int = 2000,
                     seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Evaluate chosen thresholds on another split, with stratified percentile bootstrap CIs.

    ``thresholds`` is the result of :func:`choose_thresholds` or ``{name: t}``.
    Returns ``{name: {"threshold", "rule", metric: {"value", "low", "high",
    "n_valid"}}}`` for sensitivity, specificity, ppv and npv (all thresholds
    scored on the same resamples), plus ``n``, ``prevalence``, ``n_resamples``,
    ``alpha``, ``seed``, ``method`` and ``chosen_on`` (copied when given).
    """
    y, s = _binary_inputs(y_true, p_pos)
    _check_options(n_resamples, alpha)
    parsed = _parse_thresholds(thresholds)
    scorers = [_binary_scorer(y, s, t, _CI_METRICS) for t, _ in parsed.values()]
    values, _ = _run(scorers, y, int(n_resamples), seed)
    out: dict[str, Any] = {}
    for (name, (t, rule)), vals in zip(parsed.items(), values, strict=True):
        point = binary_metrics(y, s, threshold=t)
        out[name] = {"threshold": t, "rule": rule,
                     **{m: {"value": point[m], **_interval(vals[m], alpha)} for m in _CI_METRICS},
                     **{k: point[k] for k in ("tp", "fp", "tn", "fn")}}
    return {**out, "n": len(y), "prevalence": float(y.mean()), "n_resamples": int(n_resamples),
            "alpha": float(alpha), "seed": seed, "method": "stratified percentile bootstrap",
            "chosen_on": thresholds.get("chosen_on", "unknown")}
