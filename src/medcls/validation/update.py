"""Model updating, never silent (TRIPOD+AI item 24): a recalibration fitted on a stated, seeded part of the external
cases, reported before and after on the rest (never the same rows), and stored as a new post-processing entry that
says what it was fitted on. The stored operating point is carried over to the new scale (the same cases are called
positive), so the update changes probabilities, not decisions."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import numpy as np

from ..artefact import Postprocess
from ..errors import DataError
from ..metrics.external import difference, fit_recalibration, fit_rows, recalibrate, with_ci
from .figures import bootstrapped


def _mapped(points: dict[str, Any] | None, upd: dict[str, float]) -> dict[str, Any] | None:
    """The operating points with each threshold moved to the recalibrated scale."""
    if not points:
        return points
    out = dict(points)
    for k, v in points.items():
        if isinstance(v, dict) and isinstance(v.get("threshold"), int | float):
            out[k] = {**v, "threshold": float(recalibrate(v["threshold"], **upd))}
    return out


def recalibrated_postprocess(post: Postprocess, method: str, upd: dict[str, float], pos: int,
                             fitted_on: dict[str, Any]) -> Postprocess:
    """``post`` with the update ``logit p' = a + b logit p`` after its temperature, its thresholds moved with it."""
    where = (f"{fitted_on['n']} cases ({fitted_on['fraction']:.0%} per class, seed {fitted_on['seed']}) of "
             f"{fitted_on['source']}")
    note = (f"RECALIBRATED ({method}) on external data: {where}; logit p' = {upd['intercept']:.4g} + "
            f"{upd['slope']:.4g} logit p after T = {post.temperature:.4g} (fitted on {post.fitted_on})")
    return replace(post, threshold=float(recalibrate(post.threshold, **upd)),
                   operating_points=_mapped(post.operating_points, upd), notes=[*post.notes, note],
                   recalibration={"method": method, **upd, "positive_index": pos, "fitted_on": fitted_on})


def recalibration(method: str, y: np.ndarray, p: np.ndarray, post: Postprocess, *, pos: int, fraction: float,
                  seed: int, n_resamples: int, source: str) -> tuple[dict[str, Any], np.ndarray, Postprocess]:
    """Fit ``method`` on ``fraction`` of the cases (per class, drawn with ``seed``); the figures before and after on
    the held-out rest (the same resamples, so the change is paired), the fit mask and the new post-processing."""
    fit = fit_rows(y, fraction, seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        upd = fit_recalibration(method, y[fit], p[fit])
    notes = [f"{method}: {w.message}" for w in caught if issubclass(w.category, RuntimeWarning)]
    if method == "temperature":
        notes.append("a temperature rescales the log-odds around 0 and cannot move the mean risk: when "
                     "calibration-in-the-large is off, use intercept or logistic")
    if upd["slope"] <= 0:
        raise DataError(f"{method} recalibration gave slope {upd['slope']:.3g}: the model ranks cases backwards here")
    hy, hp = y[~fit], p[~fit]
    if hy.min() == hy.max():
        raise DataError("the held-out part has one class only: lower --fit-fraction")
    new_threshold = float(recalibrate(post.threshold, **upd))
    before = bootstrapped(hy, hp, post.threshold, n_resamples, seed + 2)
    after = bootstrapped(hy, recalibrate(hp, **upd), new_threshold, n_resamples, seed + 2)
    fitted_on = {"source": source, "n": int(fit.sum()), "events": int(y[fit].sum()), "fraction": fraction,
                 "seed": seed, "rows": "predictions.csv rows with part = fit"}
    block = {"method": method, "update": upd, "fitted_on": fitted_on,
             "held_out": {"n": len(hy), "events": int(hy.sum())},
             "threshold": {"before": post.threshold, "after": new_threshold},
             "before": with_ci(before["point"], before["draws"]), "after": with_ci(after["point"], after["draws"]),
             "change": difference(before, after), "notes": notes}
    return block, fit, recalibrated_postprocess(post, method, upd, pos, fitted_on)
