"""The figures of an external validation, as pure functions of labels, probabilities and what the model stored.

Every figure of :data:`~medcls.metrics.external.FIGURES` with a bootstrap CI (cases resampled from all, not
within each class: :func:`~medcls.metrics.external.bootstrap_indices`); the stored operating
points applied here and whether they hold (:func:`~medcls.metrics.apply_thresholds`,
:func:`~medcls.metrics.threshold_transfer`); the smoothed calibration curve with a bootstrap band; the decision
curve (:func:`~medcls.metrics.net_benefit`); per-site figures and their
heterogeneity; the sample-size check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..metrics import apply_thresholds, delong_auc_ci, net_benefit, threshold_transfer
from ..metrics.external import (
    Stat,
    bootstrap_indices,
    class_figures,
    figures,
    integrated_calibration_index,
    lowess,
    resample,
    sample_size,
    smoothed_curve,
    with_ci,
)

SMALL_SITE_EVENTS = 100  # a site with fewer cases than this in a class is marked small (Collins et al. 2016)


def stat_for(task: str, names: list[str], pos: int | None, threshold: float) -> Stat:
    """The figures of one sample of (class indices, probability matrix): binary ones of the positive class at
    ``threshold``, or a multiclass model's (:func:`~medcls.metrics.external.class_figures`)."""
    if task == "binary":
        return lambda y, probs: figures((np.asarray(y) == pos).astype(int), np.asarray(probs)[:, pos], threshold)
    return lambda y, probs: class_figures(y, probs, names)


def bootstrapped(stat: Stat, y: np.ndarray, probs: np.ndarray, n_resamples: int, seed: int) -> dict[str, Any]:
    """``{"point", "draws", "figures"}`` of one sample: the figures, their resampled values, both with CIs."""
    point, draws = stat(y, probs), resample(stat, y, probs, n_resamples, seed)
    return {"point": point, "draws": draws, "figures": with_ci(point, draws)}


def calibration_band(y: np.ndarray, p: np.ndarray, n_resamples: int, seed: int, alpha: float = 0.05) -> dict:
    """The smoothed calibration curve of 0/1 outcomes ``y`` on risks ``p`` and its pointwise bootstrap band."""
    at, obs = smoothed_curve(y, p)
    idx = bootstrap_indices(len(y), n_resamples, seed)
    curves = np.stack([lowess(p[i], y[i].astype(np.float64), at) for i in idx])
    lo, hi = np.quantile(curves, [alpha / 2, 1 - alpha / 2], axis=0)
    return {"predicted": at.tolist(), "observed": obs.tolist(), "low": lo.tolist(), "high": hi.tolist(),
            "method": f"lowess (local linear, span 0.75), pointwise band of {n_resamples} resamples"}


def _binary_extras(y: np.ndarray, p: np.ndarray, post, n_resamples: int, seed: int) -> dict[str, Any]:
    """DeLong's AUC CI, ICI/E50/E90, the calibration curve, the decision curve and the stored operating points."""
    out: dict[str, Any] = {"auc_delong": delong_auc_ci(y, p), "ici": integrated_calibration_index(y, p),
                           "calibration_curve": calibration_band(y, p, min(n_resamples, 200), seed),
                           "decision_curve": net_benefit(y, p),
                           "operating_point": {"selected": post.selected, "threshold": post.threshold}}
    if post.operating_points:
        applied = apply_thresholds(y, p, post.operating_points, n_resamples=n_resamples, seed=seed)
        out["operating_points"] = applied
        out["threshold_transfer"] = threshold_transfer(post.operating_points, applied)
    return out


def external_block(task: str, y: np.ndarray, probs: np.ndarray, post, names: list[str], pos: int | None, *,
                   n_resamples: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The external figures with CIs and the task's curves and operating points; and the bootstrap."""
    boot = bootstrapped(stat_for(task, names, pos, post.threshold), y, probs, n_resamples, seed)
    out: dict[str, Any] = {"figures": boot["figures"]}
    if task == "binary":
        out.update(_binary_extras((y == pos).astype(int), probs[:, pos], post, n_resamples, seed))
    else:
        out["operating_point"] = {"selected": "argmax"}
        out["calibration_curves"] = {c: calibration_band((y == k).astype(int), probs[:, k], min(n_resamples, 200),
                                                         seed) for k, c in enumerate(names)}
    return out, boot


# ------------------------------------------------------------------------------------------------ sites
def heterogeneity(values: list[float], ses: list[float]) -> dict[str, Any]:
    """Cochran's Q, I² and the DerSimonian-Laird tau² of per-site estimates (``ses`` from their bootstrap CIs)."""
    v, s = np.asarray(values, np.float64), np.asarray(ses, np.float64)
    ok = np.isfinite(v) & np.isfinite(s) & (s > 0)
    if ok.sum() < 2:
        return {"sites": int(ok.sum()), "q": float("nan"), "i2": float("nan"), "tau2": float("nan")}
    v, w = v[ok], 1 / s[ok] ** 2
    pooled = float((w * v).sum() / w.sum())
    q, df = float((w * (v - pooled) ** 2).sum()), int(ok.sum()) - 1
    tau2 = max(0.0, (q - df) / (w.sum() - (w ** 2).sum() / w.sum()))
    from scipy.stats import chi2

    return {"sites": int(ok.sum()), "pooled": pooled, "q": q, "df": df, "p": float(chi2.sf(q, df)),
            "i2": max(0.0, (q - df) / q) if q > 0 else 0.0, "tau2": float(tau2),
            "range": [float(v.min()), float(v.max())]}


def _se(ci: dict[str, Any]) -> float:
    lo, hi = ci.get("low", math.nan), ci.get("high", math.nan)
    return (hi - lo) / (2 * 1.959963984540054) if math.isfinite(lo) and math.isfinite(hi) else math.nan


def _site(stat: Stat, y: np.ndarray, probs: np.ndarray, names: list[str], pos: int | None, n_resamples: int,
          seed: int) -> dict[str, Any]:
    counts = np.bincount(y, minlength=len(names))
    entry: dict[str, Any] = {"n": len(y), "per_class": dict(zip(names, counts.tolist(), strict=True))}
    if pos is not None:
        entry.update(events=int(counts[pos]), prevalence=float(counts[pos] / len(y)))
    if counts.min() >= 2:
        entry["figures"] = bootstrapped(stat, y, probs, n_resamples, seed)["figures"]
    else:
        entry["note"] = f"cases per class {entry['per_class']}: figures need at least 2 of each class"
    entry["small"] = bool(counts.min() < SMALL_SITE_EVENTS)
    return entry


def per_site(stat: Stat, y: np.ndarray, probs: np.ndarray, sites: np.ndarray, names: list[str], pos: int | None,
             *, n_resamples: int, seed: int) -> dict[str, Any]:
    """Every figure per site (with CIs), the between-site heterogeneity of each, and the small sites marked."""
    rows = {str(s): _site(stat, y[sites == s], probs[sites == s], names, pos, n_resamples, seed)
            for s in sorted(set(sites.tolist()), key=str)}
    smallest = min(rows, key=lambda k: rows[k]["n"]) if rows else None
    keys = next((list(r["figures"]) for r in rows.values() if "figures" in r), [])
    het = {}
    for f in keys:
        cis = [r["figures"][f] for r in rows.values() if "figures" in r]
        het[f] = heterogeneity([c["value"] for c in cis], [_se(c) for c in cis])
    return {"sites": rows, "smallest": smallest, "heterogeneity": het,
            "small_rule": f"fewer than {SMALL_SITE_EVENTS} cases in a class (events or non-events)",
            "heterogeneity_method": "Cochran's Q, I² and DerSimonian-Laird tau², SEs from the bootstrap CIs"}


# ------------------------------------------------------------------------------------------------ sample size
def _short(ss: dict[str, Any]) -> bool:
    req = [v for v in ss["required"].values() if v is not None]
    return any(v > ss["n"] for v in req) or min(ss["events"], ss["non_events"]) < 100


def _warning(ss: dict[str, Any], what: str) -> str:
    need = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in ss["required"].items() if v is not None)
    t = ss["targets"]
    return (f"sample size{what}: {ss['n']} cases ({ss['events']} events, {ss['non_events']} non-events) is below "
            f"what a reliable external validation needs: n for a 95% CI of width {t['oe_ci_width']} for O/E and "
            f"{t['slope_ci_width']} for the calibration slope, {t['c_ci_width']} for the C statistic: {need}; and "
            "at least 100 events and 100 non-events (Riley et al. 2021)")


def sample_size_check(task: str, y: np.ndarray, probs: np.ndarray, names: list[str], pos: int | None,
                      aucs: Callable[[str], float]) -> tuple[dict[str, Any], list[str]]:
    """Riley et al. (2021) sizes for this set (a multiclass model: each class against the rest), and a warning
    line for each shortfall. ``aucs(c)``: the observed AUC of class ``c`` (binary: of the positive class)."""
    if task == "binary":
        ss = sample_size((y == pos).astype(int), probs[:, pos], auc=aucs(names[pos]))
        return ss, [_warning(ss, "")] if _short(ss) else []
    per = {c: sample_size((y == k).astype(int), probs[:, k], auc=aucs(c)) for k, c in enumerate(names)}
    return {"per_class": per, "method": "each class against the rest"}, [
        _warning(ss, f" ({c} against the rest)") for c, ss in per.items() if _short(ss)]
