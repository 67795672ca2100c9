"""Thresholds chosen on validation data, checked by brute force over every distinct score."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from medcls.errors import ConfigError, DataError
from medcls.metrics import (
    UndefinedMetricWarning,
    apply_thresholds,
    binary_metrics,
    bootstrap_ci,
    choose_thresholds,
)

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


# ------------------------------------------------------------------ multi-label
def _multilabel(seed: int = 0, n: int = 300):
    """Three labels with different score scales (so their thresholds differ) and a label with no positives."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 4)) < [0.5, 0.2, 0.05, 0.0]).astype(int)
    y[:2, :3] = [[0, 0, 0], [1, 1, 1]]
    z = rng.normal(size=(n, 4)) + 2.0 * y + np.array([-1.0, -2.5, 0.5, -3.0])
    return y, 1 / (1 + np.exp(-z))


NAMES = ["effusion", "nodule", "mass", "hernia"]


def test_choose_label_thresholds_runs_every_rule_per_column():
    from medcls.metrics.operating_points import choose_label_thresholds

    y, p = _multilabel(0)
    res = choose_label_thresholds(y, p, class_names=NAMES, target_sensitivity=0.9, target_specificity=0.8)
    assert res["chosen_on"] == "val" and res["n"] == 300 and set(res["per_label"]) == set(NAMES)
    for k, name in enumerate(NAMES[:3]):
        assert res["per_label"][name] == choose_thresholds(y[:, k], p[:, k], target_sensitivity=0.9,
                                                           target_specificity=0.8)
    youden = [res["per_label"][c]["youden"]["threshold"] for c in NAMES[:3]]
    assert len(set(youden)) == 3  # each label gets its own threshold
    # 'hernia' has no positives: no threshold can be chosen, 0.5 with a note, nothing raises
    assert set(res["skipped"]) == {"hernia"} and "0 positive(s) and 300 negative(s)" in res["skipped"]["hernia"]
    assert set(RULES) & set(res["per_label"]["hernia"]) == {"default"}
    assert res["per_label"]["hernia"]["default"]["threshold"] == 0.5


def test_select_label_thresholds_falls_back_per_label():
    from medcls.metrics.operating_points import choose_label_thresholds, select_label_thresholds

    y, p = _multilabel(1)
    chosen = choose_label_thresholds(y, p, class_names=NAMES)
    thr, rules, notes = select_label_thresholds(chosen, "max_f1")
    assert rules == {"effusion": "max_f1", "nodule": "max_f1", "mass": "max_f1", "hernia": "default"}
    assert thr["hernia"] == 0.5 and thr["nodule"] == chosen["per_label"]["nodule"]["max_f1"]["threshold"]
    assert len(notes) == 1 and "'hernia'" in notes[0]
    thr, rules, notes = select_label_thresholds(chosen, "default")
    assert set(thr.values()) == {0.5} and not notes
    with pytest.raises(ConfigError, match="Did you mean 'youden'"):
        select_label_thresholds(chosen, "youdn")
    with pytest.raises(ConfigError, match="choose_label_thresholds"):
        select_label_thresholds({"youden": 0.3}, "youden")


def test_multilabel_decision_metrics_match_sklearn():
    import sklearn.metrics as skm

    from medcls.metrics.operating_points import label_decisions, multilabel_decision_metrics

    y, p = _multilabel(2)
    t = {"effusion": 0.4, "nodule": 0.2, "mass": 0.7, "hernia": 0.5}
    res = multilabel_decision_metrics(y, p, t, class_names=NAMES)
    pred = label_decisions(p, t, class_names=NAMES).astype(int)
    assert np.array_equal(pred, (p >= [0.4, 0.2, 0.7, 0.5]).astype(int))
    assert label_decisions(p, [0.4, 0.2, 0.7, 0.5], class_names=NAMES).tolist() == pred.astype(bool).tolist()
    for k, c in enumerate(NAMES[:3]):
        d = res["per_label"][c]
        assert d["threshold"] == t[c]
        assert d["sensitivity"] == pytest.approx(skm.recall_score(y[:, k], pred[:, k]))
        assert d["specificity"] == pytest.approx(skm.recall_score(1 - y[:, k], 1 - pred[:, k]))
        assert d["ppv"] == pytest.approx(skm.precision_score(y[:, k], pred[:, k]))
        assert d["f1"] == pytest.approx(skm.f1_score(y[:, k], pred[:, k]))
    assert math.isnan(res["per_label"]["hernia"]["sensitivity"])  # no positives: undefined, not an error
    assert res["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert res["hamming_accuracy"] == pytest.approx(1 - skm.hamming_loss(y, pred))
    assert res["macro_f1"] == pytest.approx(np.mean([skm.f1_score(y[:, k], pred[:, k]) for k in range(3)]))
    assert res["n_no_finding"] == int((pred.sum(1) == 0).sum())


def test_apply_label_thresholds_equals_per_label_apply():
    from medcls.metrics.operating_points import apply_label_thresholds, choose_label_thresholds

    yv, pv = _multilabel(3)
    yt, pt = _multilabel(4, n=200)
    chosen = choose_label_thresholds(yv, pv, class_names=NAMES)
    res = apply_label_thresholds(yt, pt, chosen, class_names=NAMES, n_resamples=100, seed=1)
    assert res["chosen_on"] == "val" and res["n"] == 200 and res["n_resamples"] == 100
    for k, c in enumerate(NAMES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)  # AUC of 'hernia' (no positives)
            ref = apply_thresholds(yt[:, k], pt[:, k], chosen["per_label"][c], n_resamples=100, seed=1)
        assert json.dumps(res["per_label"][c], sort_keys=True) == json.dumps({**ref, "chosen_on": "val"}, sort_keys=True)
    assert set(RULES) & set(res["per_label"]["hernia"]) == {"default"}
    with pytest.raises(ConfigError, match="choose_label_thresholds output"):
        apply_label_thresholds(yt, pt, chosen, class_names=["a", "b", "c", "d"], n_resamples=10)


def test_multilabel_threshold_inputs_are_checked():
    from medcls.metrics.operating_points import choose_label_thresholds, threshold_vector

    y, p = _multilabel(0, n=20)
    with pytest.raises(ConfigError, match=r"no entry for label\(s\) \['mass', 'hernia'\]"):
        threshold_vector({"effusion": 0.5, "nodule": 0.5}, NAMES)
    with pytest.raises(ConfigError, match="got 2 thresholds for 4 labels"):
        threshold_vector([0.5, 0.5], NAMES)
    with pytest.raises(ConfigError, match="label 'nodule' must be a finite number"):
        threshold_vector([0.5, float("nan"), 0.5, 0.5], NAMES)
    with pytest.raises(DataError, match="got 3 class_names but probs has 4 columns"):
        choose_label_thresholds(y, p, class_names=NAMES[:3])
    with pytest.raises(DataError, match=r"expected y_true of shape \(N, 4\)"):
        choose_label_thresholds(y[:, :3], p, class_names=NAMES)
    with pytest.raises(ConfigError, match="target_sensitivity"):
        choose_label_thresholds(y, p, class_names=NAMES, target_sensitivity=0)


def test_threshold_transfer_flags_what_did_not_hold():
    """Per rule: provenance, val value -> value here with CI, and a flag when the target (or the val value)
    lies outside this split's CI; the fixed default is never said to be chosen (but flagged alike)."""
    from medcls.metrics import threshold_transfer

    chosen = {"chosen_on": "val", "targets": {"sensitivity": 0.95, "specificity": 0.95},
              "default": {"threshold": 0.5, "val": {"sensitivity": 0.84, "specificity": 1.0}},
              "youden": {"threshold": 0.09, "val": {"sensitivity": 0.97, "specificity": 0.99}},
              "target_specificity": {"threshold": 0.04, "val": {"sensitivity": 0.98, "specificity": 0.956}}}

    def ci(v, lo, hi):
        return {"value": v, "low": lo, "high": hi}

    applied = {"n": 624,
               "default": {"threshold": 0.5, "sensitivity": ci(0.887, 0.856, 0.918), "specificity": ci(0.94, 0.91, 0.97)},
               "youden": {"threshold": 0.09, "sensitivity": ci(0.985, 0.97, 0.995), "specificity": ci(0.735, 0.675, 0.79)},
               "target_specificity": {"threshold": 0.04, "sensitivity": ci(0.99, 0.98, 1.0),
                                      "specificity": ci(0.611, 0.547, 0.671)}}
    t = threshold_transfer(chosen, applied)
    assert t["default"]["provenance"] == "fixed"  # never said to be chosen, but a change is still shown:
    assert t["default"]["flags"] == ["sensitivity 0.840 on val outside the CI [0.856, 0.918] here",
                                     "specificity 1.000 on val outside the CI [0.910, 0.970] here"]
    assert t["youden"]["provenance"] == "fitted on val"
    assert t["youden"]["flags"] == ["specificity 0.990 on val outside the CI [0.675, 0.790] here"]
    assert t["target_specificity"]["specificity"]["target"] == 0.95
    assert t["target_specificity"]["flags"] == ["specificity target 0.95 missed: CI [0.547, 0.671] on 624 cases"]
    met = threshold_transfer({**chosen, "target_specificity": {"threshold": 0.04, "val": {"specificity": 0.96}}},
                             {**applied, "target_specificity": {"threshold": 0.04,
                                                                "specificity": ci(0.97, 0.955, 0.99)}})
    assert met["target_specificity"]["flags"] == []  # above its target: held, even if the CI excludes .95
    edge = threshold_transfer(chosen, {**applied, "youden": {**applied["youden"],
                                                            "specificity": ci(0.99, 0.9905, 0.995)}})
    assert edge["youden"]["flags"] == []  # outside by less than 0.001: reads as inside, not flagged
    assert t["youden"]["sensitivity"] == {"chosen": 0.97, "value": 0.985, "low": 0.97, "high": 0.995, "target": None}
