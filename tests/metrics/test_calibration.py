"""Calibration metrics (checked by hand and against scikit-learn) and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn import metrics as skm

from medcls.errors import ConfigError, DataError
from medcls.metrics import (
    NotFittedError,
    TemperatureScaler,
    brier_score,
    calibration_report,
    expected_calibration_error,
    max_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)


def _sampled(t_true: float, n: int = 20000, k: int = 5, seed: int = 0):
    """Logits z and labels drawn from softmax(z / t_true): the right temperature is t_true."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=4.0, size=(n, k))
    p = softmax(z / t_true, axis=1)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(1)
    return z, np.minimum(y, k - 1)


# ------------------------------------------------------------------ metrics
def test_ece_and_mce_by_hand():
    # top-label: confidences 0.9, 0.85, 0.7, 0.65; predictions 1, 1, 0, 0; right: 1, 0, 1, 1
    y = np.array([1, 0, 0, 0])
    p = np.array([0.9, 0.85, 0.3, 0.35])
    # bins of width 0.2: [0.6, 0.8) conf 0.675 acc 1.0 -> 0.325; [0.8, 1] conf 0.875 acc 0.5 -> 0.375
    assert expected_calibration_error(y, p, n_bins=5) == pytest.approx(0.5 * 0.325 + 0.5 * 0.375)
    assert max_calibration_error(y, p, n_bins=5) == pytest.approx(0.375)
    assert expected_calibration_error(y, np.c_[1 - p, p], n_bins=5) == pytest.approx(0.35)  # (N, 2) the same
    assert expected_calibration_error(y, p, n_bins=1) == pytest.approx(abs(0.75 - 0.775))


def test_ece_edges_and_multiclass():
    y = np.array([0, 1, 2])
    probs = np.array([[1.0, 0.0, 0.0], [0.2, 0.55, 0.25], [0.65, 0.1, 0.25]])
    # conf 1.0 (right, in the last bin), 0.55 (right), 0.65 (wrong): one bin -> |2/3 - 2.2/3|
    assert expected_calibration_error(y, probs, n_bins=1) == pytest.approx(0.2 / 3)
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx((0.0 + 0.45 + 0.65) / 3)
    assert max_calibration_error(y, probs, n_bins=10) == pytest.approx(0.65)


def test_ece_small_when_calibrated():
    rng = np.random.default_rng(0)
    p = rng.random(50000)
    y = (rng.random(50000) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01


def test_reliability_curve_consistent_with_ece():
    z, y = _sampled(2.0, n=2000)
    probs = softmax(z, axis=1)
    curve = reliability_curve(y, probs, n_bins=10)
    count = np.array(curve["count"])
    assert count.sum() == len(y) and len(curve["bin_lower"]) == 10 and curve["bin_upper"][-1] == 1.0
    gaps = np.abs(np.array(curve["accuracy"]) - np.array(curve["confidence"]))
    assert np.nansum(gaps * count) / count.sum() == pytest.approx(expected_calibration_error(y, probs, n_bins=10))
    assert np.isnan(curve["accuracy"][0])  # no top-label confidence below 1/5


@pytest.mark.parametrize("seed", range(3))
def test_brier_and_nll_binary_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    p = np.clip(rng.random(200) * 0.6 + 0.4 * y, 0, 1)
    assert brier_score(y, p) == pytest.approx(skm.brier_score_loss(y, p))
    assert brier_score(y, np.c_[1 - p, p]) == pytest.approx(skm.brier_score_loss(y, p))
    assert negative_log_likelihood(y, p) == pytest.approx(skm.log_loss(y, p))
    assert negative_log_likelihood(y, np.c_[1 - p, p]) == pytest.approx(skm.log_loss(y, p))


def test_brier_and_nll_multiclass_and_multilabel():
    z, y = _sampled(1.0, n=500)
    probs = softmax(z, axis=1)
    onehot = np.eye(5)[y]
    assert brier_score(y, probs) == pytest.approx(((probs - onehot) ** 2).sum(1).mean())
    assert negative_log_likelihood(y, probs) == pytest.approx(skm.log_loss(y, probs, labels=range(5)))
    yl = (z > 0).astype(int)
    pl = expit(z / 3)
    assert brier_score(yl, pl) == pytest.approx(np.mean([skm.brier_score_loss(yl[:, j], pl[:, j]) for j in range(5)]))
    assert negative_log_likelihood(yl, pl) == pytest.approx(np.mean([skm.log_loss(yl[:, j], pl[:, j])
                                                                      for j in range(5)]))


def test_metric_bad_inputs():
    with pytest.raises(DataError, match="logits"):
        expected_calibration_error([0, 1], [-2.0, 3.0])
    with pytest.raises(DataError, match="samples"):
        brier_score([0, 1, 1], [0.2, 0.9])
    with pytest.raises(DataError, match="integer class indices"):
        negative_log_likelihood([0, 3], [[0.5, 0.5], [0.1, 0.9]])
    with pytest.raises(DataError, match="NaN"):
        brier_score([0, 1], [0.1, np.nan])
    with pytest.raises(ConfigError, match="n_bins"):
        expected_calibration_error([0, 1], [0.2, 0.9], n_bins=0)


# ------------------------------------------------------- temperature scaling
def test_temperature_recovered_multiclass():
    z, y = _sampled(2.5)
    scaler = TemperatureScaler(task="multiclass").fit(z, y)
    assert scaler.temperature_ == pytest.approx(2.5, rel=0.10)
    assert scaler.nll_after_ < scaler.nll_before_
    probs = scaler.predict_proba(z)
    assert np.allclose(probs.sum(1), 1) and np.array_equal(probs, scaler.transform(z))
    assert "temperature_=" in repr(scaler)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_temperature_recovered_sigmoid(task):
    rng = np.random.default_rng(1)
    z = rng.normal(scale=4.0, size=20000 if task == "binary" else (5000, 4))
    y = (rng.random(z.shape) < expit(z / 2.5)).astype(int)
    scaler = TemperatureScaler(task=task).fit(z, y)
    assert scaler.temperature_ == pytest.approx(2.5, rel=0.10)
    assert scaler.transform(z).shape == z.shape


def test_binary_two_logits_softmax():
    z, y = _sampled(2.5, k=2)
    assert TemperatureScaler(task="binary").fit(z, y).temperature_ == pytest.approx(2.5, rel=0.10)


def test_calibration_report_improves_overconfident_logits():
    z, y = _sampled(2.5, seed=3)
    rep = calibration_report(y, z, task="multiclass")
    assert rep["temperature"] == pytest.approx(2.5, rel=0.10) and rep["temperature_source"] == "fitted on these data"
    for m in ("nll", "ece", "brier"):
        assert rep["after"][m] < rep["before"][m], m
    assert rep["before"]["nll"] == pytest.approx(negative_log_likelihood(y, softmax(z, axis=1)))
    given = calibration_report(y, z, task="multiclass", temperature=1.0)
    assert given["before"] == given["after"] and given["temperature_source"] == "given"


def test_scaler_errors():
    z, y = _sampled(1.0, n=50)
    with pytest.raises(NotFittedError, match=r"not fitted yet.*fit"):
        TemperatureScaler().transform(z)
    assert issubclass(NotFittedError, ValueError)
    with pytest.raises(ConfigError, match="Did you mean 'multiclass'"):
        TemperatureScaler(task="multiclas")
    with pytest.raises(DataError, match="samples"):
        TemperatureScaler().fit(z, y[:-1])
    with pytest.raises(DataError, match="shape"):
        TemperatureScaler(task="binary").fit(z, y)  # 5 columns for a binary task
    scaler = TemperatureScaler().fit(z, y)
    with pytest.raises(DataError, match="columns"):
        scaler.transform(z[:, :3])
    with pytest.raises(ConfigError, match="temperature"):
        calibration_report(y, z, task="multiclass", temperature=-1.0)
