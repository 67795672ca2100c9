"""Bootstrap CIs, paired comparisons and DeLong, checked against the plain metrics and scikit-learn."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from medcls.errors import ConfigError, DataError
from medcls.metrics import (
    HEADLINE_BY_TASK,
    bootstrap_ci,
    compute_metrics,
    delong_auc_ci,
    delong_test,
    paired_bootstrap_diff,
    stratified_bootstrap_indices,
)

BIN = ["normal", "pneumonia"]


def _binary(seed: int = 0, n: int = 300, prevalence: float = 0.6, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * y - 0.5)))
    if ties:
        p = np.round(p, 1)
    return y, np.c_[1 - p, p]


def _multiclass(seed: int = 0, n: int = 300, k: int = 4):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 1.0
    return y, np.exp(z) / np.exp(z).sum(1, keepdims=True)


def _multilabel(seed: int = 0, n: int = 300):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.5, 0.2, 0.05]).astype(int)
    y[0], y[1] = 0, 1
    return y, 1 / (1 + np.exp(-(rng.normal(size=(n, 3)) + 2 * y - 1)))


# ------------------------------------------------------------------ indices
def test_indices_keep_class_counts_and_are_reproducible():
    y = np.array([0] * 7 + [1] * 3 + [2] * 5)
    idx = stratified_bootstrap_indices(y, 300, seed=3)
    assert idx.shape == (300, 15) and idx.dtype.kind == "i"
    for row in idx:
        assert np.bincount(y[row], minlength=3).tolist() == [7, 3, 5]
    assert np.array_equal(idx, stratified_bootstrap_indices(y, 300, seed=3))
    assert not np.array_equal(idx, stratified_bootstrap_indices(y, 300, seed=4))


def test_multilabel_indices_are_plain_resamples():
    y, _ = _multilabel()
    idx = stratified_bootstrap_indices(y, 20, seed=0)
    assert idx.shape == (20, len(y)) and idx.min() >= 0 and idx.max() < len(y)


# ---------------------------------------------------------- bootstrap_ci
@pytest.mark.parametrize("ties", [False, True])
def test_binary_matches_plain_metrics_on_every_resample(ties):
    """Point values are compute_metrics; the interval is the percentile of compute_metrics over
    the resamples of stratified_bootstrap_indices (looped here, vectorised in the library)."""
    y, p = _binary(1, n=120, ties=ties)
    res = bootstrap_ci("binary", y, p, class_names=BIN, threshold=0.4, n_resamples=60, seed=5)
    point = compute_metrics("binary", y, p, class_names=BIN, threshold=0.4)
    idx = stratified_bootstrap_indices(y, 60, seed=5)
    per = [compute_metrics("binary", y[i], p[i], class_names=BIN, threshold=0.4) for i in idx]
    for m in HEADLINE_BY_TASK["binary"]:
        assert res[m]["value"] == point[m]
        vals = np.array([r[m] for r in per])
        assert res[m]["n_valid"] == 60
        assert [res[m]["low"], res[m]["high"]] == pytest.approx(np.percentile(vals, [2.5, 97.5]), abs=1e-12)
    assert res["n_resamples"] == 60 and res["n_degenerate"] == 0 and res["seed"] == 5
    assert res["method"] == "stratified percentile bootstrap"


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_multiclass_and_multilabel_match_plain_metrics(task):
    y, p = _multiclass(2, n=150) if task == "multiclass" else _multilabel(2, n=150)
    names = [f"c{i}" for i in range(p.shape[1])]
    res = bootstrap_ci(task, y, p, class_names=names, n_resamples=40, seed=1)
    point = compute_metrics(task, y, p, class_names=names)
    idx = stratified_bootstrap_indices(y, 40, seed=1)
    with warnings.catch_warnings():  # a rare label may be missing from a plain resample
        warnings.simplefilter("ignore")
        per = [compute_metrics(task, y[i], p[i], class_names=names) for i in idx]
    assert set(HEADLINE_BY_TASK[task]) <= set(res)
    for m in HEADLINE_BY_TASK[task]:
        assert res[m]["value"] == point[m]
        vals = np.array([r[m] for r in per])
        assert [res[m]["low"], res[m]["high"]] == pytest.approx(np.percentile(vals, [2.5, 97.5]), abs=1e-12)


def test_ci_contains_point_and_shrinks_with_more_data():
    widths = []
    for n in (200, 3000):
        y, p = _binary(0, n=n)
        res = bootstrap_ci("binary", y, p, class_names=BIN, n_resamples=400)
        for m in HEADLINE_BY_TASK["binary"]:
            assert res[m]["low"] <= res[m]["value"] <= res[m]["high"], m
        widths.append({m: res[m]["high"] - res[m]["low"] for m in HEADLINE_BY_TASK["binary"]})
    for m in HEADLINE_BY_TASK["binary"]:
        assert widths[1][m] < 0.6 * widths[0][m], m


def test_same_seed_same_ci_and_other_seed_differs():
    y, p = _binary(0)
    a = bootstrap_ci("binary", y, p, class_names=BIN, n_resamples=200, seed=7)
    assert a == bootstrap_ci("binary", y, p, class_names=BIN, n_resamples=200, seed=7)
    assert a["auc"] != bootstrap_ci("binary", y, p, class_names=BIN, n_resamples=200, seed=8)["auc"]


def test_degenerate_resamples_are_counted_not_fatal():
    # one positive (missed at 0.5) and one negative called positive: in about (4/5)^5 of the
    # resamples that negative is not drawn, so nothing is called positive and PPV is undefined
    p_pos = np.array([0.3, 0.1, 0.2, 0.4, 0.35, 0.7])
    y = np.array([1, 0, 0, 0, 0, 0])
    res = bootstrap_ci("binary", y, np.c_[1 - p_pos, p_pos], class_names=BIN, n_resamples=500)
    assert 0 < res["n_degenerate"] < 500
    assert res["ppv"]["n_valid"] == 500 - res["n_degenerate"]
    assert res["auc"]["n_valid"] == 500  # stratified: the positive is in every resample
    assert not math.isnan(res["sensitivity"]["high"])


def test_metric_undefined_everywhere_gives_nan_interval():
    y = np.array([1, 0, 0, 0])
    p_pos = np.array([0.1, 0.2, 0.3, 0.4])  # nothing ever called positive
    res = bootstrap_ci("binary", y, np.c_[1 - p_pos, p_pos], class_names=BIN, n_resamples=50, metrics=["ppv"])
    assert res["ppv"]["n_valid"] == 0 and math.isnan(res["ppv"]["low"]) and res["n_degenerate"] == 50
    assert "ppv" in res and "auc" not in res


def test_multilabel_rare_label_degenerate():
    y = np.zeros((30, 2), int)
    y[::2, 0] = 1
    y[0, 1] = 1  # a single positive for label 1: absent from about a third of the resamples
    p = np.clip(y * 0.5 + np.linspace(0.1, 0.4, 30)[:, None], 0, 1)
    res = bootstrap_ci("multilabel", y, p, class_names=["a", "b"], n_resamples=300)
    assert 50 < res["n_degenerate"] < 200 and res["auc"]["n_valid"] == 300
    assert res["method"] == "percentile bootstrap"


def test_bad_inputs_raise():
    y, p = _binary(0)
    with pytest.raises(DataError, match="samples"):
        bootstrap_ci("binary", y[:-1], p, class_names=BIN, n_resamples=10)
    with pytest.raises(DataError, match="shape"):
        bootstrap_ci("binary", y, p[:, 1], class_names=BIN, n_resamples=10)
    with pytest.raises(DataError, match="integer class indices"):
        bootstrap_ci("binary", y + 1, p, class_names=BIN, n_resamples=10)
    with pytest.raises(ConfigError, match="Did you mean 'sensitivity'"):
        bootstrap_ci("binary", y, p, class_names=BIN, metrics=["sensitivty"])
    with pytest.raises(ConfigError, match="macro_f1"):
        bootstrap_ci("multiclass", *_multiclass(), class_names=list("abcd"), metrics=["sensitivity"])
    with pytest.raises(ConfigError, match="alpha"):
        bootstrap_ci("binary", y, p, class_names=BIN, alpha=5)
    with pytest.raises(ConfigError, match="n_resamples"):
        stratified_bootstrap_indices(y, 0)
    with pytest.raises(ConfigError, match="task"):
        bootstrap_ci("binray", y, p, class_names=BIN)


# ------------------------------------------------------------------- paired
def test_paired_identical_models_have_zero_difference():
    y, p = _binary(0)
    res = paired_bootstrap_diff(y, p, p, task="binary", class_names=BIN, n_resamples=200)
    for m in ("auc", "accuracy", "sensitivity", "specificity"):
        assert res[m]["diff"] == 0 and res[m]["low"] == res[m]["high"] == 0 and res[m]["p_value"] == 1.0


def test_paired_clearly_better_model():
    y, p = _binary(0, n=400)
    rng = np.random.default_rng(1)
    noisy = 1 / (1 + np.exp(-(rng.normal(size=len(y)) * 2)))  # an uninformative model
    res = paired_bootstrap_diff(y, np.c_[1 - noisy, noisy], p, task="binary", class_names=BIN,
                                n_resamples=500, metrics=("auc", "accuracy"))
    assert res["auc"]["b"] == compute_metrics("binary", y, p, class_names=BIN)["auc"]
    assert res["auc"]["diff"] == pytest.approx(res["auc"]["b"] - res["auc"]["a"])
    assert 0 < res["auc"]["low"] <= res["auc"]["diff"] <= res["auc"]["high"]
    assert res["auc"]["p_value"] < 0.01
    assert res["n_degenerate"] == 0 and "p_value_method" in res


def test_paired_shape_mismatch():
    y, p = _binary(0)
    with pytest.raises(DataError):
        paired_bootstrap_diff(y, p, p[:-1], task="binary", class_names=BIN, n_resamples=10)


# ------------------------------------------------------------------- DeLong
def _delong_brute(y, s):
    """O(mn) structural components (DeLong et al. 1988, eq. 3-5)."""
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None]) + 0.5 * (x[:, None] == z[None])
    v10, v01 = psi.mean(1), psi.mean(0)
    return psi.mean(), math.sqrt(v10.var(ddof=1) / len(x) + v01.var(ddof=1) / len(z))


@pytest.mark.parametrize("ties", [False, True])
def test_delong_matches_sklearn_and_brute_force(ties):
    y, p = _binary(3, n=250, ties=ties)
    res = delong_auc_ci(y, p[:, 1])
    auc, se = _delong_brute(y, p[:, 1])
    assert res["value"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]), abs=1e-12) == auc
    assert res["se"] == pytest.approx(se, rel=1e-10)
    assert res["low"] < res["value"] < res["high"]


def test_delong_ci_close_to_bootstrap_ci():
    y, p = _binary(4, n=600)
    d = delong_auc_ci(y, p[:, 1])
    b = bootstrap_ci("binary", y, p, class_names=BIN, metrics=["auc"])["auc"]
    assert (d["high"] - d["low"]) == pytest.approx(b["high"] - b["low"], rel=0.25)
    assert d["value"] == b["value"]


def test_delong_test_different_and_identical():
    y, p = _binary(5, n=400)
    rng = np.random.default_rng(0)
    weak = p[:, 1] + rng.normal(scale=1.0, size=len(y))
    diff = delong_test(y, weak, p[:, 1])
    assert diff["diff"] > 0 and diff["p"] < 1e-3
    assert diff["diff"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]) - skm.roc_auc_score(y, weak))
    same = delong_test(y, p[:, 1], p[:, 1])
    assert same["diff"] == 0 and same["se"] == 0 and same["p"] == 1.0


def test_delong_undefined_and_bad_input():
    with pytest.warns(match="undefined"):
        assert math.isnan(delong_auc_ci([1, 1, 1], [0.1, 0.5, 0.9])["value"])
    assert math.isnan(delong_auc_ci([1, 0, 0], [0.9, 0.5, 0.1])["se"])  # one positive: no variance
    with pytest.raises(DataError):
        delong_test([0, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(DataError):
        delong_auc_ci([0, 1, 2], [0.1, 0.2, 0.3])


def test_ci_coverage_on_simulated_data_is_close_to_95_percent():
    """Repeated samples from a population with known AUC and sensitivity: ~95% of the CIs cover the truth."""
    from scipy.stats import norm

    d, t, n_rep = 1.2, 0.6, 200
    true_auc = float(norm.cdf(d / np.sqrt(2)))
    true_sens = float(norm.sf(t - d))
    rng = np.random.default_rng(123)
    hits = {"auc": 0, "sensitivity": 0, "delong": 0}
    for r in range(n_rep):
        y = np.r_[np.zeros(120, int), np.ones(80, int)]
        s = np.r_[rng.normal(0, 1, 120), rng.normal(d, 1, 80)]
        p = 1 / (1 + np.exp(-(s - t)))  # p >= 0.5  <=>  s >= t
        ci = bootstrap_ci("binary", y, np.c_[1 - p, p], class_names=["neg", "pos"], positive_index=1,
                          n_resamples=400, seed=r, metrics=["auc", "sensitivity"])
        hits["auc"] += ci["auc"]["low"] <= true_auc <= ci["auc"]["high"]
        hits["sensitivity"] += ci["sensitivity"]["low"] <= true_sens <= ci["sensitivity"]["high"]
        dl = delong_auc_ci(y, p)
        hits["delong"] += dl["low"] <= true_auc <= dl["high"]
    coverage = {k: v / n_rep for k, v in hits.items()}
    print("coverage", coverage)
    for k, c in coverage.items():
        assert 0.88 <= c <= 0.99, (k, coverage)
