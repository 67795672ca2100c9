"""EvalResult (metrics + the cases behind them) and the one reader of a stored predictions.csv: pure, no model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medcls.errors import DataError
from medcls.evaluation import EvalResult, read_predictions

NAMES = ("normal", "pneumonia")


def _binary(n: int = 6) -> EvalResult:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=n)
    return EvalResult({"auc": 0.8, "n": n}, [f"c{i}" for i in range(n)], np.arange(n) % 2,
                      np.c_[1 - p, p], NAMES, "binary", positive_index=1, threshold=0.5, decision_threshold=0.3)


def test_reads_like_the_metrics_dict():
    r = _binary()
    assert r["auc"] == 0.8 and dict(r) == {"auc": 0.8, "n": 6} and "auc" in r and r.get("x") is None
    assert r.n == 6


def test_frame_round_trips_through_the_one_reader(tmp_path):
    r = _binary()
    df = r.frame()
    assert list(df.columns) == ["id", "label", "prob_normal", "prob_pneumonia", "predicted", "correct", "decision"]
    pos = r.probs[:, 1]
    assert (df["predicted"] == np.where(pos >= 0.5, "pneumonia", "normal")).all()
    assert (df["decision"] == np.where(pos >= 0.3, "pneumonia", "normal")).all()  # the operating point in use
    df.to_csv(tmp_path / "predictions.csv", index=False)
    (tmp_path / "metrics.json").write_text(json.dumps({"auc": 0.8}))
    back = read_predictions(tmp_path / "predictions.csv", class_names=NAMES, task="binary", positive_index=1)
    assert back.ids == r.ids and np.array_equal(back.labels, r.labels)
    np.testing.assert_allclose(back.probs, r.probs)
    assert back["auc"] == 0.8


def test_ids_that_look_like_numbers_or_na_stay_strings(tmp_path):
    r = EvalResult({}, ["007", "NA", "1e3"], np.array([0, 1, 0]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]),
                   NAMES, "multiclass")
    r.frame().to_csv(tmp_path / "p.csv", index=False)
    assert read_predictions(tmp_path / "p.csv", class_names=NAMES, task="multiclass").ids == ["007", "NA", "1e3"]


def test_multilabel_round_trip(tmp_path):
    names = ("effusion", "nodule", "mass")
    labels = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    probs = np.array([[0.9, 0.2, 0.1], [0.1, 0.7, 0.6], [0.3, 0.3, 0.3]])
    r = EvalResult({}, ["a", "b", "c"], labels, probs, names, "multilabel", threshold=0.5,
                   decision_threshold={"effusion": 0.5, "nodule": 0.5, "mass": 0.5})
    df = r.frame()
    assert df["decision"].tolist() == ["effusion", "nodule;mass", "no finding"]
    df.to_csv(tmp_path / "p.csv", index=False)
    back = read_predictions(tmp_path / "p.csv", class_names=names, task="multilabel")
    assert np.array_equal(back.labels, labels) and np.allclose(back.probs, probs)


def test_align_reorders_every_array_and_refuses_unknown_ids():
    r = _binary(4)
    a = r.align(["c3", "c0"])
    assert a.ids == ["c3", "c0"] and a.labels.tolist() == [1, 0]
    np.testing.assert_allclose(a.probs, r.probs[[3, 0]])
    with pytest.raises(DataError, match="not in this evaluation"):
        r.align(["c0", "zz"])


def test_reader_says_what_is_wrong_in_one_line(tmp_path):
    with pytest.raises(DataError, match="no predictions file"):
        read_predictions(tmp_path / "nope.csv", class_names=NAMES, task="binary")
    pd.DataFrame({"id": ["a"], "label": ["normal"], "prob_normal": [1.0]}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(DataError, match="missing prob_pneumonia"):
        read_predictions(tmp_path / "p.csv", class_names=NAMES, task="binary")
    pd.DataFrame({"id": ["a"], "label": ["cat"], "prob_normal": [1.0], "prob_pneumonia": [0.0]}).to_csv(
        tmp_path / "p.csv", index=False)
    with pytest.raises(DataError, match="not classes of this model"):
        read_predictions(tmp_path / "p.csv", class_names=NAMES, task="binary")
