"""External validation of a binary risk score: calibration beyond ECE, its bootstrap CIs, recalibration and the
sample size an external validation needs. Pure functions of 0/1 labels and probabilities of the positive class.

With the linear predictor ``lp = logit(p)`` (Van Calster et al. 2016, J Clin Epidemiol 74:167, "calibration
hierarchy"; Steyerberg, *Clinical Prediction Models*, 2nd ed., ch. 15):

- calibration-in-the-large (``citl``): ``a`` of ``logit P(y=1) = a + lp`` (``lp`` an offset, slope fixed at 1):
  0 when the mean risk is right; > 0 when the model's risks are too low here, < 0 too high;
- calibration slope (``slope``): ``b`` of ``logit P(y=1) = a + b lp``: 1 ideal, < 1 risks too extreme, > 1 too modest;
- observed/expected (``oe``): events / sum of the predicted risks;
- integrated calibration index (``ici``; Austin & Steyerberg 2019, Stat Med 38:4051): the mean ``|p - s(p)|``,
  ``s`` a local-linear lowess of ``y`` on ``p`` (tricube weights, span 3/4, as R's ``loess`` degree 1); ``e50`` and
  ``e90`` its median and 90th percentile. The same smoother draws the smoothed calibration curve;
- ``ece``: the project's top-label ECE (:func:`~medcls.metrics.calibration.expected_calibration_error`).

Recalibration (Steyerberg ch. 20; Vergouwe et al. 2017, Stat Med 36:4529) updates ``lp`` to ``a + b lp``:
``intercept`` (b = 1), ``logistic`` (a and b) or ``temperature`` (a = 0, b = 1/T).

Sample size (Riley et al. 2021, Stat Med 40:4230, "Minimum sample size for external validation of a clinical
prediction model with a binary outcome"): the n at which the 95% CI of O/E, of the calibration slope and of the
C statistic reach a target width, the information terms taken from the observed risks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from scipy.special import expit

from ..errors import ConfigError, DataError
from .bootstrap import check_options, percentile_interval
from .calibration import expected_calibration_error
from .classification import roc_auc

EPS = 1e-7
SPAN = 0.75
GRID = 50
RECALIBRATIONS = ("intercept", "logistic", "temperature")
FIGURES = ("auc", "citl", "slope", "oe", "ici", "ece", "sensitivity", "specificity")


def logit(p: Any) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped to [1e-7, 1 - 1e-7]."""
    q = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


def binary_pair(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels (N,) and probabilities (N,) in [0, 1], checked."""
    yy, pp = np.asarray(y).astype(np.float64).ravel(), np.asarray(p, np.float64).ravel()
    if len(yy) != len(pp) or len(yy) == 0:
        raise DataError(f"expected as many labels as probabilities (> 0), got {len(yy)} and {len(pp)}")
    if not np.isin(yy, (0, 1)).all() or not ((pp >= 0) & (pp <= 1)).all():
        raise DataError("expected 0/1 labels and probabilities in [0, 1]")
    return yy, pp


# ------------------------------------------------------------------------------------------- logistic fits
def _loglik(y: np.ndarray, eta: np.ndarray) -> float:
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)))


def fit_logistic(y: np.ndarray, x: np.ndarray | None, offset: np.ndarray, iters: int = 100) -> np.ndarray:
    """Maximum-likelihood ``(a[, b])`` of ``logit P(y=1) = offset + a [+ b x]`` by Newton-Raphson with step halving
    (a full step can overshoot when the risks are far off); ``nan`` when it does not converge (separation, one
    class)."""
    design = np.stack([np.ones_like(offset)] + ([] if x is None else [x]), axis=1)
    beta = np.zeros(design.shape[1])
    ll = _loglik(y, offset + design @ beta)
    for _ in range(iters):
        mu = expit(offset + design @ beta)
        try:
            step = np.linalg.solve(design.T @ (design * (mu * (1 - mu))[:, None]), design.T @ (y - mu))
        except np.linalg.LinAlgError:
            break
        for _half in range(40):  # the log-likelihood is concave: a short enough step along Newton's direction gains
            new_ll = _loglik(y, offset + design @ (beta + step))
            if new_ll >= ll - 1e-12:
                break
            step = step / 2
        beta, ll = beta + step, new_ll
        if np.abs(step).max() < 1e-9:
            return beta
    return np.full(design.shape[1], np.nan)


def calibration_in_the_large(y: Any, p: Any) -> float:
    """``a`` of ``logit P(y=1) = a + logit(p)``: 0 when the mean risk is right (see the module)."""
    yy, pp = binary_pair(y, p)
    return float(fit_logistic(yy, None, logit(pp))[0])


def calibration_slope(y: Any, p: Any) -> dict[str, float]:
    """``intercept`` and ``slope`` of ``logit P(y=1) = a + b logit(p)`` (see the module)."""
    yy, pp = binary_pair(y, p)
    a, b = fit_logistic(yy, logit(pp), np.zeros(len(yy)))
    return {"intercept": float(a), "slope": float(b)}


def observed_expected(y: Any, p: Any) -> float:
    """Observed events over expected (the sum of predicted risks)."""
    yy, pp = binary_pair(y, p)
    return float(yy.sum() / pp.sum()) if pp.sum() > 0 else float("nan")


# ------------------------------------------------------------------------------------------- smoothing
def lowess(x: np.ndarray, y: np.ndarray, at: np.ndarray, span: float = SPAN) -> np.ndarray:
    """Local-linear regression of ``y`` on ``x`` evaluated ``at`` (tricube weights over the ``span`` nearest
    share of the points), clipped to [0, 1]."""
    k = max(3, min(len(x), math.ceil(span * len(x))))
    d = np.abs(at[:, None] - x[None, :])
    h = np.maximum(np.partition(d, k - 1, axis=1)[:, k - 1], 1e-12)
    w = np.clip(1 - (d / h[:, None]) ** 3, 0, None) ** 3
    sw, swx, swy = w.sum(1), w @ x, w @ y
    mx, my = swx / sw, swy / sw
    sxx = (w * (x[None, :] - mx[:, None]) ** 2).sum(1)
    sxy = (w * (x[None, :] - mx[:, None]) * (y[None, :] - my[:, None])).sum(1)
    slope = np.divide(sxy, sxx, out=np.zeros_like(sxy), where=sxx > 1e-12)
    return np.clip(my + slope * (at - mx), 0.0, 1.0)


def smoothed_curve(y: Any, p: Any, grid: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """The smoothed calibration curve: ``grid`` points spread over the quantiles of ``p`` and the observed risk
    there."""
    yy, pp = binary_pair(y, p)
    at = np.unique(np.quantile(pp, np.linspace(0, 1, grid)))
    return at, lowess(pp, yy, at)


def integrated_calibration_index(y: Any, p: Any) -> dict[str, float]:
    """``ici`` (mean), ``e50`` and ``e90`` of ``|p - s(p)|`` on the smoothed calibration curve."""
    yy, pp = binary_pair(y, p)
    at, obs = smoothed_curve(yy, pp)
    err = np.abs(pp - np.interp(pp, at, obs))
    return {"ici": float(err.mean()), "e50": float(np.median(err)), "e90": float(np.quantile(err, 0.9))}


# ------------------------------------------------------------------------------------------- figures + CIs
def figures(y: Any, p: Any, threshold: float) -> dict[str, float]:
    """Every figure of :data:`FIGURES` on one sample (``nan`` where undefined, e.g. one class)."""
    yy, pp = binary_pair(y, p)
    pos, neg, called = yy == 1, yy == 0, pp >= threshold
    both = bool(pos.any() and neg.any())
    return {"auc": roc_auc(yy, pp) if both else float("nan"),
            "citl": calibration_in_the_large(yy, pp), "slope": calibration_slope(yy, pp)["slope"],
            "oe": observed_expected(yy, pp), "ici": integrated_calibration_index(yy, pp)["ici"],
            "ece": expected_calibration_error(yy.astype(int), pp),
            "sensitivity": float(called[pos].mean()) if pos.any() else float("nan"),
            "specificity": float((~called[neg]).mean()) if neg.any() else float("nan")}


Stat = Callable[[np.ndarray, np.ndarray], dict[str, float]]


def bootstrap_indices(n: int, n_resamples: int, seed: int, block: int = 64) -> Iterator[np.ndarray]:
    """Resamples of ``n`` cases drawn with replacement from all of them, one index array (n,) at a time (``block``
    drawn together: memory stays at ``block x n`` for any ``n_resamples``). Not within each class: the prevalence is
    part of what O/E and calibration-in-the-large measure (a stratified resample would hold the events fixed)."""
    check_options(n_resamples)
    rng = np.random.default_rng(seed)
    for start in range(0, int(n_resamples), block):
        yield from rng.integers(0, n, size=(min(block, int(n_resamples) - start), n))


def class_figures(y: Any, probs: Any, class_names: list[str]) -> dict[str, float]:
    """A multiclass model's figures: macro one-vs-rest AUC, accuracy, balanced accuracy, top-label ECE, and each
    class's calibration against the rest (``citl[c]``, ``slope[c]``, ``oe[c]``, ``ici[c]``, ``auc[c]``)."""
    yy, pp = np.asarray(y, np.int64), np.asarray(probs, np.float64)
    if pp.ndim != 2 or pp.shape != (len(yy), len(class_names)):
        raise DataError(f"expected probabilities of shape ({len(yy)}, {len(class_names)}), got {pp.shape}")
    pred = pp.argmax(1)
    present = [k for k in range(len(class_names)) if (yy == k).any()]
    out: dict[str, float] = {"accuracy": float((pred == yy).mean()),
                             "balanced_accuracy": float(np.mean([(pred[yy == k] == k).mean() for k in present])),
                             "ece": expected_calibration_error(yy, pp)}
    aucs = []
    for k, c in enumerate(class_names):
        yk = (yy == k).astype(int)
        out[f"auc[{c}]"] = roc_auc(yk, pp[:, k]) if 0 < yk.sum() < len(yk) else float("nan")
        aucs.append(out[f"auc[{c}]"])
        out[f"citl[{c}]"] = calibration_in_the_large(yk, pp[:, k])
        out[f"slope[{c}]"] = calibration_slope(yk, pp[:, k])["slope"]
        out[f"oe[{c}]"] = observed_expected(yk, pp[:, k])
        out[f"ici[{c}]"] = integrated_calibration_index(yk, pp[:, k])["ici"]
    out["auc"] = float(np.mean(aucs))
    return out


def resample(stat: Stat, y: Any, p: Any, n_resamples: int, seed: int) -> dict[str, np.ndarray]:
    """``stat`` on ``n_resamples`` bootstrap resamples (:func:`bootstrap_indices`): one array per figure."""
    yy, pp = np.asarray(y), np.asarray(p, np.float64)
    if len(yy) != len(pp) or len(yy) == 0:
        raise DataError(f"expected as many labels as probability rows (> 0), got {len(yy)} and {len(pp)}")
    idx = bootstrap_indices(len(yy), n_resamples, seed)
    rows = [stat(yy[i], pp[i]) for i in idx]
    return {k: np.asarray([r[k] for r in rows], np.float64) for k in rows[0]}


def with_ci(point: dict[str, float], draws: dict[str, np.ndarray], alpha: float = 0.05) -> dict[str, Any]:
    """``{figure: {"value", "low", "high", "n_valid"}}``: the point value and its percentile interval."""
    return {k: {"value": float(v), **percentile_interval(draws[k], alpha)} for k, v in point.items() if k in draws}


def difference(internal: dict[str, Any], external: dict[str, Any], alpha: float = 0.05) -> dict[str, Any]:
    """External minus internal per figure, with a percentile CI from two independent bootstraps (the same number
    of resamples each): ``internal``/``external`` are ``{"point": {...}, "draws": {...}}``."""
    out = {}
    for k in internal["point"]:
        if k in external["point"] and k in internal["draws"] and k in external["draws"]:
            d = external["draws"][k] - internal["draws"][k]
            out[k] = {"internal": internal["point"][k], "external": external["point"][k],
                      "diff": external["point"][k] - internal["point"][k], **percentile_interval(d, alpha)}
    return out


# ------------------------------------------------------------------------------------------- recalibration
def fit_recalibration(method: str, y: Any, p: Any) -> dict[str, float]:
    """``intercept`` and ``slope`` of the update ``logit p' = a + b logit p`` fitted on ``(y, p)``."""
    if method not in RECALIBRATIONS:
        raise ConfigError(f"recalibration must be one of {', '.join(RECALIBRATIONS)}, got {method!r}")
    yy, pp = binary_pair(y, p)
    if yy.min() == yy.max():
        raise DataError(f"{method} recalibration needs both classes in the rows it is fitted on")
    lp = logit(pp)
    if method == "intercept":
        a, b = fit_logistic(yy, None, lp)[0], 1.0
    elif method == "logistic":
        a, b = fit_logistic(yy, lp, np.zeros(len(yy)))
    else:
        from .calibration import TemperatureScaler

        a, b = 0.0, 1.0 / TemperatureScaler(task="binary").fit(lp, yy.astype(int)).temperature_
    if not (math.isfinite(a) and math.isfinite(b)):
        raise DataError(f"{method} recalibration did not converge (are the classes separable on these rows?)")
    return {"intercept": float(a), "slope": float(b)}


def recalibrate(p: Any, intercept: float, slope: float) -> np.ndarray:
    """``expit(intercept + slope * logit(p))``."""
    return expit(intercept + slope * logit(p))


def fit_rows(y: Any, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of the rows to fit on: ``fraction`` of each class, drawn with ``seed`` (the rest held out)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"the fitted fraction must be strictly between 0 and 1, got {fraction}")
    yy = np.asarray(y)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(yy), bool)
    for c in np.unique(yy):
        rows = np.flatnonzero(yy == c)
        mask[rng.choice(rows, round(fraction * len(rows)), replace=False)] = True
    return mask


# ------------------------------------------------------------------------------------------- sample size
def _c_se(c: float, n: int, phi: float) -> float:
    """SE of the C statistic (Newcombe 2006, as Riley et al. 2021 use it)."""
    m = n / 2 - 1
    return math.sqrt(c * (1 - c) * (1 + m * (1 - c) / (2 - c) + m * c / (1 + c)) / (n * n * phi * (1 - phi)))


def _c_size(c: float, phi: float, target: float) -> int:
    """The smallest n whose C-statistic SE is at most ``target`` (the SE falls with n: bisection)."""
    lo, hi = 4, 8
    while _c_se(c, hi, phi) > target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _c_se(c, mid, phi) > target else (lo, mid)
    return hi


def sample_size(y: Any, p: Any, *, auc: float | None = None, oe_width: float = 0.2, slope_width: float = 0.2,
                c_width: float = 0.1) -> dict[str, Any]:
    """Riley et al. (2021) minimum sizes for this external set: the n giving a 95% CI of O/E (on the log scale,
    ``oe_width`` wide around 1), of the calibration slope (``slope_width``) and of the C statistic (``c_width``),
    with the observed prevalence, risks and ``auc``; ``adequate`` when n reaches all of them and there are at
    least 100 events and 100 non-events (Collins et al. 2016)."""
    yy, pp = binary_pair(y, p)
    n, events = len(yy), int(yy.sum())
    phi, z = events / n, 1.959963984540054
    need: dict[str, int | None] = {}
    se_oe = (math.log(1 + oe_width / 2) - math.log(1 - oe_width / 2)) / (2 * z)  # of ln(O/E)
    need["oe"] = math.ceil((1 - phi) / (phi * se_oe ** 2)) if 0 < phi < 1 else None
    lp = logit(pp)
    v = pp * (1 - pp)
    i_aa, i_ab, i_bb = v.mean(), (lp * v).mean(), (lp * lp * v).mean()
    det = i_aa * i_bb - i_ab ** 2
    need["slope"] = math.ceil(i_aa / ((slope_width / (2 * z)) ** 2 * det)) if det > 0 else None
    c = auc if auc is not None and math.isfinite(auc) else None
    need["c_statistic"] = _c_size(c, phi, c_width / (2 * z)) if c is not None and 0 < phi < 1 and 0.5 < c < 1 \
        else None
    required = max((v for v in need.values() if v is not None), default=0)
    return {"n": n, "events": events, "non_events": n - events, "prevalence": phi, "required": need,
            "targets": {"oe_ci_width": oe_width, "slope_ci_width": slope_width, "c_ci_width": c_width},
            "adequate": bool(n >= required and min(events, n - events) >= 100),
            "reference": "Riley et al. 2021, Stat Med 40:4230; at least 100 events and 100 non-events "
                         "(Collins et al. 2016, Stat Med 35:214)"}
