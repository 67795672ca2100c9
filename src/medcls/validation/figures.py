"""The figures of an external validation, as pure functions of labels, probabilities and what the model stored.

Every figure of :data:`~medcls.metrics.external.FIGURES` with a bootstrap CI (cases resampled from all, not
within each class: :func:`~medcls.metrics.external.bootstrap_indices`); the stored operating
points applied here and whether they hold (:func:`~medcls.metrics.apply_thresholds`,
:func:`~medcls.metrics.threshold_transfer`); the smoothed calibration curve with a bootstrap band; the decision
curve (:func:`~medcls.metrics.net_benefit`); external minus internal with a CI; per-site figures and their
heterogeneity; the sample-size check.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..metrics import apply_thresholds, delong_auc_ci, net_benefit, threshold_transfer
from ..metrics.external import (
    bootstrap_indices,
    difference,
    figures,
    integrated_calibration_index,
    lowess,
    resample,
    sample_size,
    smoothed_curve,
    with_ci,
)

SMALL_SITE_EVENTS = 100  # a site with fewer events or non-events than this is marked small (Collins et al. 2016)


def bootstrapped(y: np.ndarray, p: np.ndarray, threshold: float, n_resamples: int, seed: int) -> dict[str, Any]:
    """``{"point": figures, "draws": resampled figures}`` of one sample."""
    return {"point": figures(y, p, threshold),
            "draws": resample(lambda a, b: figures(a, b, threshold), y, p, n_resamples, seed)}


def calibration_band(y: np.ndarray, p: np.ndarray, n_resamples: int, seed: int, alpha: float = 0.05) -> dict:
    """The smoothed calibration curve and its pointwise bootstrap band, on the grid of the whole sample."""
    at, obs = smoothed_curve(y, p)
    idx = bootstrap_indices(len(y), n_resamples, seed)
    curves = np.stack([lowess(p[i], y[i].astype(np.float64), at) for i in idx])
    lo, hi = np.quantile(curves, [alpha / 2, 1 - alpha / 2], axis=0)
    return {"predicted": at.tolist(), "observed": obs.tolist(), "low": lo.tolist(), "high": hi.tolist(),
            "method": f"lowess (local linear, span 0.75), pointwise band of {n_resamples} resamples"}


def discrimination_and_calibration(y: np.ndarray, p: np.ndarray, post, *, n_resamples: int, seed: int
                                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The external figures with CIs, the stored operating points here, curves; and the bootstrap draws."""
    boot = bootstrapped(y, p, post.threshold, n_resamples, seed)
    out: dict[str, Any] = {"figures": with_ci(boot["point"], boot["draws"]), "auc_delong": delong_auc_ci(y, p),
                           "ici": integrated_calibration_index(y, p),
                           "calibration_curve": calibration_band(y, p, min(n_resamples, 200), seed),
                           "decision_curve": net_benefit(y, p)}
    out["operating_point"] = {"selected": post.selected, "threshold": post.threshold}
    if post.operating_points:
        applied = apply_thresholds(y, p, post.operating_points, n_resamples=n_resamples, seed=seed)
        out["operating_points"] = applied
        out["threshold_transfer"] = threshold_transfer(post.operating_points, applied)
    return out, boot


def internal_difference(internal: dict[str, Any], external: dict[str, Any]) -> dict[str, Any]:
    """External minus internal per figure (independent bootstraps of the two sets)."""
    return difference(internal, external)


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


def per_site(y: np.ndarray, p: np.ndarray, sites: np.ndarray, threshold: float, *, n_resamples: int,
             seed: int) -> dict[str, Any]:
    """Every figure per site (with CIs), the between-site heterogeneity of each, and the small sites marked."""
    rows: dict[str, Any] = {}
    for s in sorted(set(sites.tolist()), key=str):
        m = sites == s
        ys, ps = y[m], p[m]
        events = int(ys.sum())
        entry: dict[str, Any] = {"n": int(m.sum()), "events": events, "prevalence": float(ys.mean())}
        if 0 < events < len(ys) and min(events, len(ys) - events) >= 2:
            b = bootstrapped(ys, ps, threshold, n_resamples, seed)
            entry["figures"] = with_ci(b["point"], b["draws"])
        else:
            entry["note"] = f"{events} event(s) in {len(ys)} cases: figures need at least 2 of each class"
        entry["small"] = min(events, len(ys) - events) < SMALL_SITE_EVENTS
        rows[str(s)] = entry
    smallest = min(rows, key=lambda k: rows[k]["n"]) if rows else None
    het = {}
    for f in ("auc", "citl", "slope", "oe", "ici", "sensitivity", "specificity"):
        cis = [r["figures"][f] for r in rows.values() if "figures" in r]
        het[f] = heterogeneity([c["value"] for c in cis], [_se(c) for c in cis])
    return {"sites": rows, "smallest": smallest, "heterogeneity": het,
            "small_rule": f"fewer than {SMALL_SITE_EVENTS} events or non-events",
            "heterogeneity_method": "Cochran's Q, I² and DerSimonian-Laird tau², SEs from the bootstrap CIs"}


def sample_size_check(y: np.ndarray, p: np.ndarray, auc: float) -> tuple[dict[str, Any], list[str]]:
    """Riley et al. (2021) sizes for this set, and a warning line when it falls short."""
    ss = sample_size(y, p, auc=auc)
    req = {k: v for k, v in ss["required"].items() if v is not None}
    short = {k: v for k, v in req.items() if v > ss["n"]}
    warnings = []
    if short or min(ss["events"], ss["non_events"]) < 100:
        need = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in req.items())
        warnings.append(f"sample size: {ss['n']} cases ({ss['events']} events, {ss['non_events']} non-events) is "
                        f"below what a reliable external validation needs: n for a 95% CI of width "
                        f"{ss['targets']['oe_ci_width']} for O/E and {ss['targets']['slope_ci_width']} for the "
                        f"calibration slope, {ss['targets']['c_ci_width']} for the C statistic: {need}; and at "
                        "least 100 events and 100 non-events (Riley et al. 2021)")
    return ss, warnings
