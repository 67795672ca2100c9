"""Decision-curve analysis and the ROC confidence band."""

from __future__ import annotations

import numpy as np
import pytest

from medcls.errors import DataError
from medcls.metrics import net_benefit, roc_band


def test_net_benefit_by_hand():
    """4 cases, 2 positive; at t = 0.25 (odds 1/3) the model treats scores >= .25: TP 2, FP 1 of 4."""
    y, s = np.array([1, 1, 0, 0]), np.array([0.9, 0.6, 0.3, 0.1])
    d = net_benefit(y, s, [0.25, 0.5, 0.95])
    assert d["model"][0] == pytest.approx(2 / 4 - 1 / 4 * (1 / 3))
    assert d["model"][1] == pytest.approx(2 / 4)  # no false positive above .5
    assert d["treat_all"][0] == pytest.approx(0.5 - 0.5 * (1 / 3)) and d["treat_all"][1] == pytest.approx(0.0)
    assert d["model"][2] == pytest.approx(0.0)  # nobody treated at .95: the model equals treat-none
    assert d["prevalence"] == 0.5 and d["treat_none"] == [0.0] * 3
    default = net_benefit(y, s)
    assert default["thresholds"][0] == 0.01 and default["thresholds"][-1] == 0.99 and len(default["model"]) == 99
    with pytest.raises(DataError, match="strictly between 0 and 1"):
        net_benefit(y, s, [0.0, 0.5])


def test_a_perfect_model_has_the_largest_net_benefit():
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.3
    perfect, noise = net_benefit(y, y.astype(float)), net_benefit(y, rng.random(500))
    assert np.allclose(perfect["model"], y.mean())  # all positives treated, no false positive
    assert np.all(np.array(perfect["model"]) >= np.array(noise["model"]) - 1e-12)


def test_roc_band_brackets_the_curve_and_narrows_with_more_cases():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(0)

    def band(n):
        y = rng.random(n) < 0.5
        s = y * 0.8 + rng.normal(0, 0.6, n)
        return y, s, roc_band(y, s, n_resamples=300, seed=1)

    y, s, small = band(100)
    fpr, tpr, _ = roc_curve(y, s)
    point = np.interp(small["fpr"], fpr, tpr)
    lo, hi = np.array(small["tpr_low"]), np.array(small["tpr_high"])
    assert np.all(lo <= hi) and np.mean((lo <= point + 1e-9) & (point <= hi + 1e-9)) > 0.95
    *_, large = band(2000)
    width = lambda b: np.mean(np.array(b["tpr_high"]) - np.array(b["tpr_low"]))  # noqa: E731
    assert width(large) < width(small) / 2
    with pytest.raises(DataError, match="both classes"):
        roc_band(np.ones(10), np.arange(10))


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_roc_band_equals_interpolating_scikit_learns_roc_curve_per_resample(decimals):
    """The band is built from case multiplicities over one sort; it must equal the straightforward
    construction (scikit-learn's roc_curve on each resample, interpolated), ties included."""
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(3)
    y = rng.random(150) < 0.4
    s = rng.normal(y * 1.2, 1)
    s = s if decimals is None else np.round(s, decimals)
    draw, grid = np.random.default_rng(7), np.linspace(0, 1, 101)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    tprs = []
    for _ in range(100):
        idx = np.concatenate([draw.choice(pos, len(pos)), draw.choice(neg, len(neg))])
        fpr, tpr, _ = roc_curve(y[idx], s[idx])
        tprs.append(np.interp(grid, fpr, tpr))
    lo, hi = np.quantile(tprs, [0.025, 0.975], axis=0)
    band = roc_band(y, s, n_resamples=100, seed=7)
    np.testing.assert_allclose(band["tpr_low"], lo, atol=1e-12)
    np.testing.assert_allclose(band["tpr_high"], hi, atol=1e-12)
