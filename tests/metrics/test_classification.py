"""Every metric in medcls.metrics.classification checked against scikit-learn."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from medcls.errors import ConfigError, DataError
from medcls.metrics import (
    UndefinedMetricWarning,
    average_precision,
    binary_metrics,
    compute_metrics,
    confusion_counts,
    multiclass_metrics,
    multilabel_metrics,
    roc_auc,
    roc_auc_many,
    task_auc,
)


def _binary_data(seed: int, n: int = 300, prevalence: float = 0.3, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]  # both classes always present
    score = rng.normal(size=n) + 1.2 * y
    if ties:
        score = np.round(score, 1)  # many tied scores across classes
    return y, score


def _multiclass_data(seed: int, n: int = 400, k: int = 5):
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=np.linspace(1, 3, k) / np.linspace(1, 3, k).sum())
    y[:k] = np.arange(k)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def _multilabel_data(seed: int, n: int = 300, k: int = 4):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < np.array([0.1, 0.3, 0.5, 0.05])[:k]).astype(int)
    y[0], y[1] = 0, 1
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, k)) + 2 * y - 1)))
    return y, np.round(probs, 2)


# ------------------------------------------------------------------ ranking
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("prevalence", [0.5, 0.05])
def test_roc_auc_and_ap_match_sklearn(seed, ties, prevalence):
    y, s = _binary_data(seed, prevalence=prevalence, ties=ties)
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


def test_roc_auc_perfect_reversed_and_all_tied():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc(y, [0.5] * 4) == 0.5
    assert average_precision(y, [0.5] * 4) == pytest.approx(skm.average_precision_score(y, [0.5] * 4))


def test_roc_auc_accepts_bool_and_float_labels():
    y, s = _binary_data(0)
    assert roc_auc(y.astype(bool), s) == roc_auc(y.astype(float), s) == roc_auc(y, s)


@pytest.mark.parametrize("y", [[1, 1, 1], [0, 0, 0]])
def test_single_class_gives_nan_with_warning(y):
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(roc_auc(y, [0.2, 0.5, 0.9]))
    if not any(y):
        with pytest.warns(UndefinedMetricWarning):
            assert math.isnan(average_precision(y, [0.2, 0.5, 0.9]))


def test_roc_auc_many_equals_loop():
    y, s = _binary_data(1, n=120, prevalence=0.1, ties=True)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(y), size=(50, len(y)))
    idx[0] = np.flatnonzero(y == 0)[0]  # a resample with only negatives
    many = roc_auc_many(y, s, idx)
    assert many.shape == (50,)
    assert math.isnan(many[0])
    with pytest.warns(UndefinedMetricWarning):
        expected = np.array([roc_auc(y[i], s[i]) for i in idx])
    np.testing.assert_allclose(many, expected, rtol=0, atol=1e-12)


def test_roc_auc_many_rejects_bad_indices():
    y, s = _binary_data(0, n=10)
    with pytest.raises(DataError, match=r"expected idx of shape \(B, M\), got \(10,\)"):
        roc_auc_many(y, s, np.arange(10))
    for bad in (np.full((2, 10), 10), np.full((2, 10), -1), np.zeros((2, 10))):
        with pytest.raises(DataError, match=r"integer indices in \[0, 9\]"):
            roc_auc_many(y, s, bad)


# --------------------------------------------------------------- confusion
def test_confusion_counts_matches_sklearn():
    rng = np.random.default_rng(3)
    t, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    np.testing.assert_array_equal(confusion_counts(t, p, 4), skm.confusion_matrix(t, p, labels=range(4)))
    # a class that never occurs still gets its row and column
    assert confusion_counts([0, 0], [0, 0], 3).tolist() == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]


# ------------------------------------------------------------------- binary
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_binary_metrics_match_sklearn(seed, threshold):
    y, s = _binary_data(seed, prevalence=0.2, ties=True)
    p = 1 / (1 + np.exp(-s))
    m = binary_metrics(y, p, threshold=threshold)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    approx = {
        "auc": skm.roc_auc_score(y, p),
        "ap": skm.average_precision_score(y, p),
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "sensitivity": skm.recall_score(y, pred),
        "specificity": skm.recall_score(y, pred, pos_label=0),
        "ppv": skm.precision_score(y, pred),
        "npv": skm.precision_score(y, pred, pos_label=0),
        "f1": skm.f1_score(y, pred),
        "kappa": skm.cohen_kappa_score(y, pred),
    }
    for key, expected in approx.items():
        assert m[key] == pytest.approx(expected, abs=1e-12), key
    assert m["n"] == len(y) and m["prevalence"] == pytest.approx(y.mean())
    assert m["threshold"] == threshold
    json.dumps(m)
    assert all(type(v) in (float, int) for v in m.values())


def test_threshold_moves_sensitivity_and_specificity():
    y, s = _binary_data(5)
    p = 1 / (1 + np.exp(-s))
    low, high = binary_metrics(y, p, threshold=0.2), binary_metrics(y, p, threshold=0.8)
    assert low["sensitivity"] > high["sensitivity"]
    assert low["specificity"] < high["specificity"]
    assert low["auc"] == high["auc"]
    assert binary_metrics(y, p, threshold=1.01)["tp"] == 0


def test_binary_metrics_undefined_parts_are_nan():
    with pytest.warns(UndefinedMetricWarning):
        m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert math.isnan(m["auc"]) and math.isnan(m["ap"]) and math.isnan(m["sensitivity"])
    assert math.isnan(m["ppv"]) and math.isnan(m["f1"])
    assert m["specificity"] == 1.0 and m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0


# --------------------------------------------------------------- multiclass
@pytest.mark.parametrize("seed", range(3))
def test_multiclass_metrics_match_sklearn(seed):
    y, probs = _multiclass_data(seed)
    names = [f"c{k}" for k in range(probs.shape[1])]
    m = multiclass_metrics(y, probs, class_names=names)
    pred = probs.argmax(1)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["quadratic_weighted_kappa"] == pytest.approx(
        skm.cohen_kappa_score(y, pred, weights="quadratic"))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    recall = skm.recall_score(y, pred, average=None)
    precision = skm.precision_score(y, pred, average=None)
    f1 = skm.f1_score(y, pred, average=None)
    for k, name in enumerate(names):
        c = m["per_class"][name]
        yk = (y == k).astype(int)
        assert c["auc"] == pytest.approx(skm.roc_auc_score(yk, probs[:, k]))
        assert c["ap"] == pytest.approx(skm.average_precision_score(yk, probs[:, k]))
        assert c["sensitivity"] == pytest.approx(recall[k])
        assert c["ppv"] == pytest.approx(precision[k])
        assert c["f1"] == pytest.approx(f1[k])
        assert c["specificity"] == pytest.approx(skm.recall_score(yk, pred == k, pos_label=0))
        assert c["npv"] == pytest.approx(skm.precision_score(yk, pred == k, pos_label=0))
        assert c["support"] == int(yk.sum())
    json.dumps(m)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_multiclass_missing_class_is_nan_and_left_out_of_macro():
    y, probs = _multiclass_data(0, k=4)
    keep = y != 3
    y, probs = y[keep], probs[keep]
    with pytest.warns(UndefinedMetricWarning, match="'d'"):
        m = multiclass_metrics(y, probs, class_names=list("abcd"))
    assert math.isnan(m["per_class"]["d"]["auc"])
    per = [m["per_class"][c]["auc"] for c in "abc"]
    assert m["auc"] == pytest.approx(np.mean(per))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, probs.argmax(1)))


# --------------------------------------------------------------- multilabel
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_multilabel_metrics_match_sklearn(seed, threshold):
    y, probs = _multilabel_data(seed)
    names = ["effusion", "nodule", "mass", "hernia"]
    m = multilabel_metrics(y, probs, class_names=names, threshold=threshold)
    pred = (probs >= threshold).astype(int)
    assert m["macro_auc"] == m["auc"] == pytest.approx(skm.roc_auc_score(y, probs, average="macro"))
    assert m["micro_auc"] == pytest.approx(skm.roc_auc_score(y, probs, average="micro"))
    assert m["macro_ap"] == pytest.approx(skm.average_precision_score(y, probs, average="macro"))
    assert m["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["hamming_accuracy"] == m["accuracy"] == pytest.approx(1 - skm.hamming_loss(y, pred))
    for k, name in enumerate(names):
        c = m["per_class"][name]
        assert c["auc"] == pytest.approx(skm.roc_auc_score(y[:, k], probs[:, k]))
        assert c["ap"] == pytest.approx(skm.average_precision_score(y[:, k], probs[:, k]))
        assert c["sensitivity"] == pytest.approx(skm.recall_score(y[:, k], pred[:, k]))
        assert c["specificity"] == pytest.approx(skm.recall_score(y[:, k], pred[:, k], pos_label=0))
        assert c["f1"] == pytest.approx(skm.f1_score(y[:, k], pred[:, k], zero_division=np.nan))
    json.dumps(m)


# ----------------------------------------------------------------- dispatch
@pytest.mark.parametrize("positive_index", [None, 0, 1])
def test_compute_metrics_binary(positive_index):
    y, s = _binary_data(2, prevalence=0.3)
    p1 = 1 / (1 + np.exp(-s))
    probs = np.stack([1 - p1, p1], 1)
    m = compute_metrics("binary", y, probs, class_names=["benign", "malignant"],
                        positive_index=positive_index, threshold=0.4)
    pos = 1 if positive_index is None else positive_index
    assert m["task"] == "binary" and m["positive_class"] == ["benign", "malignant"][pos]
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y == pos, probs[:, pos]))
    pred = np.where(probs[:, pos] >= 0.4, pos, 1 - pos)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred, pos_label=pos))
    json.dumps(m)


def test_compute_metrics_dispatches_other_tasks():
    y, probs = _multiclass_data(1, k=3)
    m = compute_metrics("multiclass", y, probs, class_names=["a", "b", "c"])
    assert m["task"] == "multiclass" and m == {"task": "multiclass",
                                               **multiclass_metrics(y, probs, class_names="abc")}
    y, probs = _multilabel_data(1)
    m = compute_metrics("multilabel", y, probs, class_names=list("wxyz"), threshold=0.3)
    assert m["task"] == "multilabel" and m["threshold"] == 0.3


@pytest.mark.parametrize("positive_index", [None, 0])
def test_task_auc_is_compute_metrics_auc(positive_index):
    y, s = _binary_data(3, prevalence=0.2, ties=True)
    probs = np.stack([1 - 1 / (1 + np.exp(-s)), 1 / (1 + np.exp(-s))], 1)
    kw = {"class_names": ["a", "b"], "positive_index": positive_index}
    assert task_auc("binary", y, probs, **kw) == compute_metrics("binary", y, probs, **kw)["auc"]
    y, probs = _multiclass_data(2, k=4)
    y[y == 3] = 0  # one class without cases: macro mean over the defined ones, as compute_metrics
    with pytest.warns(UndefinedMetricWarning):
        expected = compute_metrics("multiclass", y, probs, class_names="abcd")["auc"]
    assert task_auc("multiclass", y, probs, class_names="abcd") == expected
    y, probs = _multilabel_data(2)
    assert task_auc("multilabel", y, probs, class_names="wxyz") == pytest.approx(
        compute_metrics("multilabel", y, probs, class_names="wxyz")["auc"], abs=1e-15)


def test_task_auc_undefined_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(task_auc("binary", [1, 1], [[0.2, 0.8], [0.6, 0.4]], class_names="ab"))
    with pytest.raises(ConfigError, match="Did you mean 'binary'"):
        task_auc("binay", [0, 1], np.eye(2), class_names="ab")


def test_compute_metrics_unknown_task():
    with pytest.raises(ConfigError, match="Did you mean 'multiclass'"):
        compute_metrics("multiclas", [0, 1], [[0.5, 0.5]] * 2, class_names=["a", "b"])


# ----------------------------------------------------------- input checking
@pytest.mark.parametrize(("call", "message"), [
    (lambda: roc_auc(np.zeros((3, 2)), np.zeros(3)), r"expected y_true of shape \(N,\), got \(3, 2\)"),
    (lambda: roc_auc([0, 1, 1], [0.1, 0.2]), "y_true has 3 samples but score has 2"),
    (lambda: roc_auc([0, 1, 2], [0.1, 0.2, 0.3]), r"integer class indices in \[0, 1\], got \[2\]"),
    (lambda: roc_auc([0, 1], [0.1, np.nan]), "score contains 1 NaN/inf"),
    (lambda: binary_metrics([0, 1], [[0.1], [0.2]]), r"expected score of shape \(N,\), got \(2, 1\)"),
    (lambda: multiclass_metrics([0, 1], [0.2, 0.8], class_names=["a", "b"]),
     r"expected probs of shape \(N, K\), got \(2,\)"),
    (lambda: multiclass_metrics([0, 1], np.eye(2), class_names=["a", "b", "c"]),
     "got 3 class_names but probs has 2 columns"),
    (lambda: multiclass_metrics([0, 5], np.eye(2), class_names=["a", "b"]), r"got \[5\]"),
    (lambda: multilabel_metrics(np.zeros((4, 3)), np.zeros((4, 2)), class_names=["a", "b"]),
     r"expected y_true of shape \(N, 2\), got \(4, 3\)"),
    (lambda: compute_metrics("binary", [0, 1], np.zeros((2, 3)), class_names="abc"),
     r"expected probs of shape \(N, 2\), got \(2, 3\)"),
    (lambda: compute_metrics("binary", [0, 1], np.eye(2), class_names="ab", positive_index=2),
     "positive_index must be 0 or 1"),
    (lambda: confusion_counts([0, 1], [0, 1, 1], 2), "y_true has 2 samples but y_pred has 3"),
    (lambda: multiclass_metrics([], np.zeros((0, 2)), class_names="ab"), "y_true is empty"),
    (lambda: confusion_counts([0, 1], [0, 1], 0), "num_classes must be >= 1, got 0"),
    (lambda: roc_auc(["a", "b"], [0.1, 0.2]), "expected numeric y_true"),
])
def test_bad_input_raises_data_error(call, message):
    with pytest.raises(DataError, match=message):
        call()
