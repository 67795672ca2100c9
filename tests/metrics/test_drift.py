"""Drift tests as pure functions: calm on samples of the reference's own distribution (false alarms near
alpha), loud on shifted ones, and blind to a change of prevalence alone."""

from __future__ import annotations

import numpy as np
import pytest

from medcls.metrics.drift import drift_tests, fit_reference, matched_reference, mmd_test


def population(rng, n: int, prevalence: float = 0.7, shift: float = 0.0, d: int = 64):
    """Two classes of 'features'; the score is the distance to the nearest class mean (as the gate's)."""
    y = (rng.random(n) < prevalence).astype(int)
    means = np.stack([np.zeros(d), np.r_[np.full(8, 3.0), np.zeros(d - 8)]])
    f = means[y] + rng.normal(size=(n, d)) + shift
    scores = np.sqrt(np.min([np.sum((f - m) ** 2, axis=1) for m in means], axis=0))
    return f, scores, y


def reference(rng):
    f_train, _, _ = population(rng, 2000)
    f_val, s_val, y_val = population(rng, 600)
    return fit_reference(f_train, f_val, s_val, y_val, float(np.quantile(s_val, 0.95)), ["normal", "pneumonia"])


@pytest.fixture(scope="module")
def ref():
    return reference(np.random.default_rng(0))


def test_false_alarms_stay_near_alpha_on_unshifted_samples():
    """Over references and samples both drawn anew (a fixed finite reference has its own false-alarm rate,
    which benchmarks/drift.py measures for a real bundle)."""
    rng = np.random.default_rng(1)
    alarms = [drift_tests(reference(rng), *population(rng, 200), seed=i)["drifted"] for i in range(20)]
    assert np.mean(alarms) <= 0.15


def test_a_shift_of_the_inputs_is_found_by_every_input_test(ref):
    rng = np.random.default_rng(2)
    res = drift_tests(ref, *population(rng, 200, shift=0.6))
    assert res["drifted"]
    rows = {r["test"]: r for r in res["tests"]}
    assert rows["features"]["p_value"] < 0.01 and rows["ood_score"]["p_value"] < 0.01


def test_a_change_of_prevalence_alone_is_reported_but_is_not_drift():
    rng = np.random.default_rng(3)
    alarms, mix = [], []
    for i in range(10):
        res = drift_tests(reference(rng), *population(rng, 300, prevalence=0.35), seed=i)
        alarms.append(res["drifted"])
        mix.append({r["test"]: r for r in res["tests"]}["prediction mix"]["p_value"])
    assert np.mean(alarms) <= 0.2 and max(mix) < 1e-3


def test_matched_reference_follows_the_samples_mix():
    ref_pred = np.array([0] * 300 + [1] * 700)
    idx = matched_reference(ref_pred, np.array([0] * 60 + [1] * 40))
    assert abs(np.mean(ref_pred[idx] == 0) - 0.6) < 0.01 and len(set(idx)) == len(idx) == 500


def test_mmd_p_value_is_uniformish_under_the_null_and_small_under_a_shift():
    rng = np.random.default_rng(4)
    null = [mmd_test(rng.normal(size=(60, 4)), rng.normal(size=(60, 4)), permutations=200, seed=i)[1]
            for i in range(30)]
    assert 0.3 < np.mean(null) < 0.7
    assert mmd_test(rng.normal(size=(60, 4)), rng.normal(0.8, 1, size=(60, 4)), permutations=200)[1] < 0.01
