"""External-validation figures: calibration-in-the-large, slope, O/E, ICI, recalibration, Riley sample sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medcls.errors import ConfigError, DataError
from medcls.metrics import external as ex


@pytest.fixture(scope="module")
def calibrated():
    """5,000 outcomes drawn from the very risks predicted: a perfectly calibrated model."""
    rng = np.random.default_rng(0)
    p = ex.recalibrate(rng.uniform(0.02, 0.98, 5000), 0.0, 1.0)
    return (rng.random(5000) < p).astype(int), p


def test_a_calibrated_model_has_citl_0_slope_1_oe_1_and_a_small_ici(calibrated):
    y, p = calibrated
    f = ex.figures(y, p, 0.5)
    assert abs(f["citl"]) < 0.08 and abs(f["slope"] - 1) < 0.08 and abs(f["oe"] - 1) < 0.03
    assert f["ici"] < 0.02


def test_known_miscalibration_is_recovered(calibrated):
    """Outcomes from the risks, the model shown risks moved by logit -1 and made twice as extreme."""
    y, p = calibrated
    shown = ex.recalibrate(p, -1.0, 2.0)  # logit(shown) = -1 + 2 logit(p)  =>  logit(p) = 0.5 + 0.5 logit(shown)
    s = ex.calibration_slope(y, shown)
    assert s["slope"] == pytest.approx(0.5, abs=0.04) and s["intercept"] == pytest.approx(0.5, abs=0.08)
    assert ex.calibration_in_the_large(y, ex.recalibrate(p, -1.0, 1.0)) == pytest.approx(1.0, abs=0.08)


@pytest.mark.parametrize("method", ex.RECALIBRATIONS)
def test_recalibration_brings_citl_back_on_held_out_rows(calibrated, method):
    y, p = calibrated
    shown = ex.recalibrate(p, -1.0, 1.0)
    fit = ex.fit_rows(y, 0.5, seed=0)
    assert 0.45 < fit.mean() < 0.55
    upd = ex.fit_recalibration(method, y[fit], shown[fit])
    after = ex.calibration_in_the_large(y[~fit], ex.recalibrate(shown[~fit], **upd))
    before = ex.calibration_in_the_large(y[~fit], shown[~fit])
    assert before > 0.8
    if method == "temperature":  # a temperature cannot move the mean risk: the test can tell
        assert upd["intercept"] == 0 and abs(after) > 0.5
    else:
        assert abs(after) < 0.1


def test_bootstrap_ci_covers_the_value_and_differences_are_external_minus_internal(calibrated):
    y, p = calibrated
    a = {"point": ex.figures(y[:1000], p[:1000], 0.5),
         "draws": ex.resample(lambda u, v: ex.figures(u, v, 0.5), y[:1000], p[:1000], 50, 0)}
    shifted = ex.recalibrate(p[1000:2000], -1.0, 1.0)
    b = {"point": ex.figures(y[1000:2000], shifted, 0.5),
         "draws": ex.resample(lambda u, v: ex.figures(u, v, 0.5), y[1000:2000], shifted, 50, 1)}
    ci = ex.with_ci(a["point"], a["draws"])["citl"]
    assert ci["low"] <= ci["value"] <= ci["high"] and ci["n_valid"] == 50
    d = ex.difference(a, b)["citl"]
    assert d["diff"] == pytest.approx(b["point"]["citl"] - a["point"]["citl"])
    assert d["low"] > 0.5  # the shift of +1 on the logit scale is seen, its CI away from 0


def test_sample_size_follows_riley_2021(calibrated):
    y, p = calibrated
    ss = ex.sample_size(y, p, auc=0.8)
    phi = y.mean()
    se = (math.log(1.1) - math.log(0.9)) / (2 * 1.959963984540054)
    assert ss["required"]["oe"] == math.ceil((1 - phi) / (phi * se ** 2))
    assert ss["adequate"] == (ss["n"] >= max(ss["required"].values()))
    small = ex.sample_size(y[:150], p[:150], auc=0.8)
    assert not small["adequate"] and small["required"]["c_statistic"] > 150


def test_bad_inputs_raise_project_errors():
    with pytest.raises(DataError):
        ex.figures([0, 1, 2], [0.1, 0.2, 0.3], 0.5)
    with pytest.raises(ConfigError):
        ex.fit_recalibration("platt", [0, 1], [0.2, 0.8])
    with pytest.raises(DataError, match="needs both classes"):
        ex.fit_recalibration("logistic", [1, 1, 1], [0.2, 0.8, 0.5])
    with pytest.raises(ConfigError):
        ex.fit_rows([0, 1], 1.0, 0)


def test_risks_far_too_low_still_converge(calibrated):
    """Risks shifted by -4 on the logit scale (what heavy noise did to the default recipe): a full Newton step
    overshoots there; the fit must still find the intercept."""
    y, p = calibrated
    shown = ex.recalibrate(p, -4.0, 0.6)
    assert 3.5 < ex.calibration_in_the_large(y, shown) < 4.5
    upd = ex.fit_recalibration("intercept", y, shown)
    assert abs(ex.calibration_in_the_large(y, ex.recalibrate(shown, **upd))) < 1e-6
