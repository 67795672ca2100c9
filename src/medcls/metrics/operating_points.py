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

Multi-label tasks (one sigmoid per label) get one threshold per label:
:func:`choose_label_thresholds` runs the rules above on each label's column
(a label with a single class on validation falls back to 0.5, with a note),
:func:`select_label_thresholds` picks one rule for every label,
:func:`apply_label_thresholds` and :func:`multilabel_decision_metrics` score
them on another split. A case's findings are the labels whose probability is
>= that label's threshold (:func:`label_decisions`); none means "no finding".
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np

from ..choices import OperatingPoint
from ..errors import ConfigError, DataError, did_you_mean
from .bootstrap import binary_scorer, check_options, percentile_interval, score_resamples
from .classification import UndefinedMetricWarning, binary_metrics
from .inputs import binary_inputs, check_array, check_class_names, check_scores, multilabel_inputs

RULES = get_args(OperatingPoint)
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
    y, s = binary_inputs(y_true, p_pos)
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
    y, s = binary_inputs(y_true, p_pos)
    check_options(n_resamples, alpha)
    parsed = _parse_thresholds(thresholds)
    scorers = [binary_scorer(y, s, t, _CI_METRICS) for t, _ in parsed.values()]
    values, _ = score_resamples(scorers, y, int(n_resamples), seed)
    out: dict[str, Any] = {}
    for (name, (t, rule)), vals in zip(parsed.items(), values, strict=True):
        point = binary_metrics(y, s, threshold=t)
        out[name] = {"threshold": t, "rule": rule,
                     **{m: {"value": point[m], **percentile_interval(vals[m], alpha)} for m in _CI_METRICS},
                     **{k: point[k] for k in ("tp", "fp", "tn", "fn")}}
    return {**out, "n": len(y), "prevalence": float(y.mean()), "n_resamples": int(n_resamples),
            "alpha": float(alpha), "seed": seed, "method": "stratified percentile bootstrap",
            "chosen_on": thresholds.get("chosen_on", "unknown")}


def provenance(rule: str, fitted_on: str | None) -> str:
    """Where a binary threshold came from: ``fixed`` (the configured default rule), ``fitted on <split>``, or
    ``set by hand`` (a rule whose threshold no calibration step fitted)."""
    if rule == "default":
        return "fixed"
    return f"fitted on {fitted_on}" if fitted_on not in (None, "none") else "set by hand"


TARGETS = {"target_sensitivity": "sensitivity", "target_specificity": "specificity"}
TOL = 0.001  # outside a CI by less than this is not flagged: shown to 3 decimals it would read as inside


def threshold_transfer(chosen: dict[str, Any], applied: dict[str, Any], *,
                       metrics: Sequence[str] = ("sensitivity", "specificity")) -> dict[str, Any]:
    """Did each operating point keep, on the evaluated split, what it showed where it was chosen?

    ``chosen`` is :func:`choose_thresholds`' result (per rule its ``val`` metrics, plus ``targets``),
    ``applied`` :func:`apply_thresholds`' on another split. Per rule: ``provenance`` (``fixed`` for
    ``default``, else ``fitted on <split>``) and per metric ``chosen`` (the value where it was fitted),
    ``value``/``low``/``high`` (here, with its CI), ``target`` (for target rules) and ``flags``: the
    target (a minimum) above this split's CI, or the chosen-split value outside it (by more than ``TOL``; the
    fixed ``default`` as well: what it showed there is what its users expect).
    """
    where, targets = chosen.get("chosen_on", "val"), chosen.get("targets") or {}
    out: dict[str, Any] = {}
    for name, op in applied.items():
        if not (isinstance(op, dict) and "threshold" in op and isinstance(chosen.get(name), dict)):
            continue
        seen = chosen[name].get("val") or {}
        entry: dict[str, Any] = {"threshold": op["threshold"],
                                 "provenance": provenance(name, where),
                                 "flags": []}
        for m in metrics:
            ci = op.get(m) or {}
            lo, hi = ci.get("low", float("nan")), ci.get("high", float("nan"))
            target = targets.get(m) if TARGETS.get(name) == m else None
            entry[m] = {"chosen": seen.get(m), "value": ci.get("value"), "low": lo, "high": hi, "target": target}
            if target is not None and hi + TOL < target:  # targets are minimums: only a miss is flagged
                entry["flags"].append(f"{m} target {target:g} missed: CI [{lo:.3f}, {hi:.3f}] on "
                                      f"{applied.get('n', '?')} cases")
            elif seen.get(m) is not None and not lo - TOL <= seen[m] <= hi + TOL:  # a fixed threshold too:
                # it promised nothing, but what it showed on val is what its users expect here
                entry["flags"].append(f"{m} {seen[m]:.3f} on {where} outside the CI [{lo:.3f}, {hi:.3f}] here")
        out[name] = entry
    return out


# ------------------------------------------------------------------ multi-label
_DECISION_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1", "tp", "fp", "tn", "fn")


def choose_label_thresholds(y_true: Any, probs: Any, *, class_names: Sequence[str],
                            target_sensitivity: float = 0.95, target_specificity: float = 0.95) -> dict[str, Any]:
    """Operating points of a multi-label task, chosen for each label on its own column.

    ``y_true`` is (N, L) multi-hot, ``probs`` (N, L) per-label probabilities of the
    validation split. Returns ``{"per_label": {label: <choose_thresholds result>},
    "skipped": {label: reason}, "chosen_on", "n", "targets"}``. A label with a
    single class on validation (no positives, or no negatives) cannot have a
    threshold chosen: its entry holds only the ``default`` rule (0.5, marked as a
    fallback) and the label is listed in ``skipped``; nothing raises.
    """
    y, p, names = multilabel_inputs(y_true, probs, class_names)
    t_sens = _check_target("target_sensitivity", target_sensitivity)
    t_spec = _check_target("target_specificity", target_specificity)
    per_label: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for k, name in enumerate(names):
        n_pos = int(y[:, k].sum())
        if 0 < n_pos < len(y):
            per_label[name] = choose_thresholds(y[:, k], p[:, k], target_sensitivity=t_sens,
                                                target_specificity=t_spec)
            continue
        skipped[name] = (f"{n_pos} positive(s) and {len(y) - n_pos} negative(s) on val: no threshold can be "
                         "chosen, 0.5 is used")
        per_label[name] = {"default": {"threshold": 0.5, "rule": "fixed threshold 0.5 (fallback)", "val": {}},
                           "chosen_on": "val", "n": len(y), "n_positive": n_pos, "prevalence": n_pos / len(y),
                           "fallback": skipped[name]}
    return {"per_label": per_label, "skipped": skipped, "chosen_on": "val", "n": len(y),
            "targets": {"sensitivity": t_sens, "specificity": t_spec}}


def select_label_thresholds(chosen: dict[str, Any], rule: str) -> tuple[dict[str, float], dict[str, str], list[str]]:
    """The threshold of ``rule`` for each label of :func:`choose_label_thresholds` output.

    Returns ``(thresholds, rules, notes)``: ``{label: threshold}``, ``{label: rule
    used}`` (``default`` where ``rule`` could not be chosen) and one note per fallback.
    """
    if rule not in RULES:
        raise ConfigError(f"unknown operating point {rule!r}; expected one of {list(RULES)}."
                          + did_you_mean(rule, RULES))
    if not isinstance(chosen, dict) or not isinstance(chosen.get("per_label"), dict):
        raise ConfigError("expected the result of choose_label_thresholds (a dict with 'per_label'), "
                          f"got {type(chosen).__name__}")
    thresholds, rules, notes = {}, {}, []
    for name, entry in chosen["per_label"].items():
        used = rule if rule in entry else "default"
        if used != rule:
            notes.append(f"label {name!r}: operating point {rule!r} unavailable ({entry.get('fallback', 'not chosen')})"
                         "; using 'default' (0.5)")
        thresholds[name], rules[name] = float(entry[used]["threshold"]), used
    return thresholds, rules, notes


def threshold_vector(thresholds: Any, class_names: Sequence[str]) -> np.ndarray:
    """Per-label thresholds (L,) in ``class_names`` order from ``{label: t}`` or a sequence of L numbers."""
    names = [str(c) for c in class_names]
    if isinstance(thresholds, dict):
        missing = [c for c in names if c not in thresholds]
        if missing:
            raise ConfigError(f"thresholds has no entry for label(s) {missing}; labels are {names}")
        values = [thresholds[c] for c in names]
    else:
        values = list(np.atleast_1d(np.asarray(thresholds, dtype=object)))
        if len(values) != len(names):
            raise ConfigError(f"got {len(values)} thresholds for {len(names)} labels {names}")
    for c, t in zip(names, values, strict=True):
        if isinstance(t, bool) or not isinstance(t, int | float | np.number) or not np.isfinite(t):
            raise ConfigError(f"threshold of label {c!r} must be a finite number, got {t!r}")
    return np.asarray(values, dtype=np.float64)


def label_decisions(probs: Any, thresholds: Any, *, class_names: Sequence[str]) -> np.ndarray:
    """Boolean (N, L): label ``k`` is called present when ``probs[:, k] >= thresholds[k]``."""
    p = check_scores("probs", check_array("probs", probs, 2))
    check_class_names(class_names, p.shape[1])
    return p >= threshold_vector(thresholds, class_names)


def multilabel_decision_metrics(y_true: Any, probs: Any, thresholds: Any, *,
                                class_names: Sequence[str]) -> dict[str, Any]:
    """Thresholded metrics of a multi-label task where each label has its own threshold.

    Per label: sensitivity, specificity, PPV, NPV, F1 and counts at that label's
    threshold; overall: ``hamming_accuracy`` (mean per-label accuracy),
    ``subset_accuracy`` (every label right), ``macro_f1`` (over labels where F1 is
    defined) and ``n_no_finding`` (cases with no label called present).
    """
    y, p, names = multilabel_inputs(y_true, probs, class_names)
    t = threshold_vector(thresholds, names)
    pred = p >= t
    per_label = {}
    for k, name in enumerate(names):
        with warnings.catch_warnings():  # AUC of a single-class label: not reported here
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            m = binary_metrics(y[:, k], p[:, k], threshold=float(t[k]))
        per_label[name] = {"threshold": float(t[k]), **{key: m[key] for key in _DECISION_METRICS}}
    f1 = np.array([v["f1"] for v in per_label.values()])
    return {"per_label": per_label, "hamming_accuracy": float((pred == y).mean()),
            "subset_accuracy": float((pred == y).all(1).mean()),
            "macro_f1": float(np.nanmean(f1)) if (~np.isnan(f1)).any() else float("nan"),
            "n": len(y), "n_no_finding": int((~pred.any(1)).sum())}


def apply_label_thresholds(y_true: Any, probs: Any, chosen: dict[str, Any], *, class_names: Sequence[str],
                           n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Each label's validation-chosen thresholds evaluated on another split (:func:`apply_thresholds` per label).

    ``chosen`` is :func:`choose_label_thresholds` output. Returns ``{"per_label":
    {label: <apply_thresholds result>}, "chosen_on", "n", "n_resamples", "alpha",
    "seed", "method"}``; each label is resampled within its own classes.
    """
    y, p, names = multilabel_inputs(y_true, probs, class_names)
    per = chosen.get("per_label") if isinstance(chosen, dict) else None
    if not isinstance(per, dict) or set(per) != set(names):
        got = sorted(per) if isinstance(per, dict) else type(chosen).__name__
        raise ConfigError(f"expected choose_label_thresholds output for labels {names}, got {got}")
    with warnings.catch_warnings():  # AUC of a single-class label: not reported here
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        out = {name: apply_thresholds(y[:, k], p[:, k], {**per[name], "chosen_on": chosen.get("chosen_on", "unknown")},
                                      n_resamples=n_resamples, seed=seed, alpha=alpha)
               for k, name in enumerate(names)}
    return {"per_label": out, "chosen_on": chosen.get("chosen_on", "unknown"), "n": len(y),
            "n_resamples": int(n_resamples), "alpha": float(alpha), "seed": seed,
            "method": "stratified percentile bootstrap, per label"}
