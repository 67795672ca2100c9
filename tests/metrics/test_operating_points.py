"""Thresholds chosen on validation data, checked by brute force over every distinct score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medcls.errors import ConfigError, DataError
from medcls.metrics import apply_thresholds, binary_metrics, bootstrap_ci, choose_thresholds

RULES = ("default", "youden", "max_f1", "target_sensitivity", "target_specificity")


def _data(seed: int = 0, n: int = 400, ties: bool = True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    y[:2] = [0, 1]
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * y - 0.6)))
    return y, (np.round(p, 2) if ties else p)


def _brute(y, p):
    """Metrics of every distinct score used as threshold (positive when p >= t)."""
    return {float(t): binary_metrics(y, p, threshold=float(t)) for t in np.unique(p)}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ties", [False, True])
def test_youden_and_max_f1_equal_brute_force(seed, ties):
    y, p = _data(seed, ties=ties)
    res = choose_thresholds(y, p)
    table = _brute(y, p)
    j = {t: m["sensitivity"] + m["specificity"] - 1 for t, m in table.items()}
    f1 = {t: m["f1"] for t, m in table.items()}
    for rule, crit in (("youden", j), ("max_f1", f1)):
        best = max(crit.values())
        t = res[rule]["threshold"]
        assert crit[t] == pytest.approx(best, abs=1e-12), rule
        assert t == max(u for u, v in crit.items() if v >= best - 1e-12), rule  # ties: higher threshold


@pytest.mark.parametrize("seed", range(3))
def test_targets_achieved_on_the_data_they_were_chosen_on(seed):
    y, p = _data(seed)
    res = choose_thresholds(y, p, target_sensitivity=0.9, target_specificity=0.8)
    table = _brute(y, p)
    t = res["target_sensitivity"]["threshold"]
    assert res["target_sensitivity"]["val"]["sensitivity"] >= 0.9
    assert all(m["sensitivity"] < 0.9 for u, m in table.items() if u > t)  # the highest such threshold
    t = res["target_specificity"]["threshold"]
    assert res["target_specificity"]["val"]["specificity"] >= 0.8
    assert all(m["specificity"] < 0.8 for u, m in table.items() if u < t)  # the lowest such threshold
    assert res["targets"] == {"sensitivity": 0.9, "specificity": 0.8}


def test_entries_and_provenance():
    y, p = _data(1)
    res = choose_thresholds(y, p)
    assert res["chosen_on"] == "val" and res["n"] == len(y) and res["n_positive"] == int(y.sum())
    assert res["prevalence"] == pytest.approx(y.mean())
    assert res["default"]["threshold"] == 0.5
    for rule in RULES:
        entry = res[rule]
        ref = binary_metrics(y, p, threshold=entry["threshold"])
        assert entry["rule"] and set(entry["val"]) == {"sensitivity", "specificity", "ppv", "npv", "f1"}
        for k, v in entry["val"].items():
            assert v == ref[k] or (math.isnan(v) and math.isnan(ref[k]))


def test_specificity_target_above_all_scores():
    # the top score is shared by a negative and a positive: only a threshold above it reaches spec 1
    y = np.array([0, 1, 0, 1, 0])
    p = np.array([0.9, 0.9, 0.2, 0.6, 0.1])
    res = choose_thresholds(y, p, target_specificity=1.0)
    entry = res["target_specificity"]
    assert entry["threshold"] > 0.9 and entry["val"]["specificity"] == 1.0
    assert entry["val"]["sensitivity"] == 0.0 and math.isnan(entry["val"]["ppv"])


def test_apply_thresholds_on_another_split():
    yv, pv = _data(0)
    yt, pt = _data(1, n=300)
    chosen = choose_thresholds(yv, pv)
    res = apply_thresholds(yt, pt, chosen, n_resamples=300, seed=2)
    assert res["chosen_on"] == "val" and res["n"] == 300 and res["method"] == "stratified percentile bootstrap"
    for rule in RULES:
        t = chosen[rule]["threshold"]
        ref = binary_metrics(yt, pt, threshold=t)
        assert res[rule]["threshold"] == t and res[rule]["tp"] == ref["tp"]
        for m in ("sensitivity", "specificity", "ppv", "npv"):
            assert res[rule][m]["value"] == ref[m]
            assert res[rule][m]["low"] <= ref[m] <= res[rule][m]["high"]
    # same resamples as bootstrap_ci with the same seed
    ci = bootstrap_ci("binary", yt, np.c_[1 - pt, pt], class_names=["n", "p"], n_resamples=300, seed=2,
                      threshold=chosen["youden"]["threshold"], metrics=["sensitivity", "ppv"])
    assert res["youden"]["sensitivity"] == ci["sensitivity"] and res["youden"]["ppv"] == ci["ppv"]
    assert res == apply_thresholds(yt, pt, chosen, n_resamples=300, seed=2)


def test_apply_plain_threshold_dict():
    y, p = _data(2)
    res = apply_thresholds(y, p, {"screening": 0.3, "confirm": 0.8}, n_resamples=100)
    assert set(RULES).isdisjoint(res) and res["chosen_on"] == "unknown"
    assert res["screening"]["sensitivity"]["value"] >= res["confirm"]["sensitivity"]["value"]


def test_bad_inputs():
    y, p = _data(0)
    with pytest.raises(DataError, match="positives and negatives"):
        choose_thresholds(np.zeros(10), np.linspace(0, 1, 10))
    with pytest.raises(DataError, match="samples"):
        choose_thresholds(y[:-1], p)
    with pytest.raises(DataError, match="shape"):
        choose_thresholds(y, np.c_[1 - p, p])
    with pytest.raises(ConfigError, match="target_sensitivity"):
        choose_thresholds(y, p, target_sensitivity=95)
    with pytest.raises(ConfigError, match="finite number"):
        apply_thresholds(y, p, {"a": "high"}, n_resamples=10)
    with pytest.raises(ConfigError, match="non-empty"):
        apply_thresholds(y, p, {}, n_resamples=10)
