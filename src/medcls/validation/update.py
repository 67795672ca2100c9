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
from ..errors import ConfigError, DataError
from ..metrics.external import difference, fit_recalibration, fit_rows, recalibrate
from .figures import bootstrapped, calibration_band


def _mapped(points: dict[str, Any] | None, upd: dict[str, float]) -> dict[str, Any] | None:
    """The operating points with each threshold moved to the recalibrated scale."""
    if not points:
        return points
    out = dict(points)
    for k, v in points.items():
        if isinstance(v, dict) and isinstance(v.get("threshold"), int | float):
            out[k] = {**v, "threshold": float(recalibrate(v["threshold"], **upd))}
    return out


def recalibrated_postprocess(post: Postprocess, method: str, upd: dict[str, float], pos: int | None,
                             fitted_on: dict[str, Any]) -> Postprocess:
    """``post`` updated: a temperature update divides T by the slope (``logit p' = logit p / T'``: any task); an
    intercept or logistic one adds ``logit p' = a + b logit p`` of the positive class after T. Thresholds move
    with the probabilities."""
    where = (f"{fitted_on['n']} cases ({fitted_on['fraction']:.0%} per class, seed {fitted_on['seed']}) of "
             f"{fitted_on['source']}")
    if method == "temperature":
        t = post.temperature / upd["slope"]
        note = f"RECALIBRATED (temperature) on external data: {where}; T {post.temperature:.4g} -> {t:.4g}"
        rec = {"method": method, "temperature_before": post.temperature, "temperature": t, "fitted_on": fitted_on}
        post = replace(post, temperature=t)
    else:
        note = (f"RECALIBRATED ({method}) on external data: {where}; logit p' = {upd['intercept']:.4g} + "
                f"{upd['slope']:.4g} logit p after T = {post.temperature:.4g} (fitted on {post.fitted_on})")
        rec = {"method": method, **upd, "positive_index": pos, "fitted_on": fitted_on}
    return replace(post, threshold=float(recalibrate(post.threshold, **upd)),
                   operating_points=_mapped(post.operating_points, upd), notes=[*post.notes, note],
                   recalibration=rec)


def _fit(method: str, task: str, y: np.ndarray, logits: np.ndarray, post: Postprocess,
         pos: int | None) -> tuple[dict[str, float], list[str]]:
    """The update (``intercept``, ``slope`` on the log-odds) fitted on these rows, and any fitting warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        if task == "binary":
            upd = fit_recalibration(method, (y == pos).astype(int), post.probabilities(logits, task)[:, pos])
        elif method == "temperature":
            from ..metrics import TemperatureScaler

            t = TemperatureScaler(task=task).fit(np.asarray(logits) / post.temperature, y).temperature_
            upd = {"intercept": 0.0, "slope": 1.0 / t}
        else:
            raise ConfigError(f"--recalibrate {method} updates the log-odds of a binary model's positive class; "
                              f"a {task} model takes --recalibrate temperature")
    return upd, [f"{method}: {w.message}" for w in caught if issubclass(w.category, RuntimeWarning)]


def recalibration(method: str, task: str, y: np.ndarray, logits: np.ndarray, post: Postprocess, stat_for, *,
                  pos: int | None, fraction: float, seed: int, n_resamples: int,
                  source: str) -> tuple[dict[str, Any], np.ndarray, Postprocess]:
    """Fit ``method`` on ``fraction`` of the cases (per class, drawn with ``seed``); the figures before and after on
    the held-out rest (the same resamples, so the change is paired), the fit mask and the new post-processing.
    ``stat_for(threshold)``: the figures of a sample at a threshold."""
    fit = fit_rows(y, fraction, seed)
    if len(np.unique(y[fit])) < 2 or len(np.unique(y[~fit])) < 2:
        raise DataError("the fitted or the held-out part has one class only: change --fit-fraction")
    upd, notes = _fit(method, task, y[fit], logits[fit], post, pos)
    if method == "temperature":
        notes.append("a temperature rescales the log-odds around 0 and cannot move the mean risk: when "
                     "calibration-in-the-large is off, use intercept or logistic")
    if upd["slope"] <= 0:
        raise DataError(f"{method} recalibration gave slope {upd['slope']:.3g}: the model ranks cases backwards here")
    fitted_on = {"source": source, "n": int(fit.sum()), "per_class": np.bincount(y[fit]).tolist(),
                 "fraction": fraction, "seed": seed, "rows": "predictions.csv rows with part = fit"}
    new = recalibrated_postprocess(post, method, upd, pos, fitted_on)
    hy, hz = y[~fit], logits[~fit]
    before = bootstrapped(stat_for(post.threshold), hy, post.probabilities(hz, task), n_resamples, seed + 2)
    after = bootstrapped(stat_for(new.threshold), hy, new.probabilities(hz, task), n_resamples, seed + 2)
    curves = {}
    if task == "binary":  # the held-out calibration curve before and after
        hb = (hy == pos).astype(int)
        curves = {"before": calibration_band(hb, post.probabilities(hz, task)[:, pos], min(n_resamples, 100), seed),
                  "after": calibration_band(hb, new.probabilities(hz, task)[:, pos], min(n_resamples, 100), seed)}
    block = {"method": method, "update": upd, "fitted_on": fitted_on, "calibration_curves": curves,
             "held_out": {"n": len(hy), "per_class": np.bincount(hy).tolist()},
             "threshold": {"before": post.threshold, "after": new.threshold},
             "before": before["figures"], "after": after["figures"], "change": difference(before, after),
             "notes": notes}
    return block, fit, new
