"""Postprocess: validation, decisions, and the per-checkpoint store with staleness detection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medcls.artefact import Postprocess, checkpoint_identity, read_postprocess, write_postprocess
from medcls.data.spec import DatasetSpec
from medcls.errors import ConfigError, RunError

BINARY = DatasetSpec("x", "binary", ("normal", "pneumonia"), 1)
LABELS = DatasetSpec("m", "multilabel", ("a", "b", "c"), 1)


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"temperature": -1.0}, {"temperature": float("nan")},
                                 {"threshold": 7.0}, {"threshold": -0.1}, {"thresholds": {"a": 1.5}}])
def test_nonsense_values_are_refused(bad):
    with pytest.raises(RunError, match="temperature|threshold"):
        Postprocess(**bad)


def test_a_recalibration_updates_the_positive_log_odds_after_the_temperature():
    post = Postprocess(temperature=2.0, recalibration={"method": "logistic", "intercept": 0.5, "slope": 2.0,
                                                       "positive_index": 0, "fitted_on": {"source": "site B"}})
    p = post.probabilities(np.array([[2.0, 0.0], [0.0, 0.0]]), "binary")
    assert p[0, 0] == pytest.approx(1 / (1 + np.exp(-(0.5 + 2.0 * 1.0)))) and p[1, 0] == pytest.approx(
        1 / (1 + np.exp(-0.5)))
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    assert Postprocess.from_dict(post.to_dict()).recalibration == post.recalibration
    decision = post.decision(DatasetSpec("x", "binary", ("pneumonia", "normal"), 0), "pneumonia")
    assert decision["provenance"] == "fixed, moved by logistic recalibration on site B"


@pytest.mark.parametrize("bad", [{"intercept": 0.0, "slope": 0.0, "positive_index": 1},
                                 {"intercept": float("nan"), "slope": 1.0, "positive_index": 1},
                                 {"intercept": 0.0, "slope": 1.0}])
def test_a_recalibration_without_a_positive_slope_or_class_is_refused(bad):
    with pytest.raises(RunError, match="recalibration must be a temperature update, or give"):
        Postprocess(recalibration=bad)


def test_binary_decision_at_the_threshold_and_temperature_scaling():
    post = Postprocess(temperature=2.0, threshold=0.3, selected="youden")
    p = post.probabilities(np.array([[0.0, 2.0]]), "binary")[0]
    assert p[1] == pytest.approx(1 / (1 + np.exp(-1.0)))  # softmax of logits / 2
    assert post.decide(np.array([0.69, 0.31]), BINARY) == "pneumonia"
    assert post.decide(np.array([0.71, 0.29]), BINARY) == "normal"
    assert post.decision(BINARY, "pneumonia") == {"operating_point": "youden", "threshold": 0.3,
                                                  "positive_class": "pneumonia", "provenance": "set by hand"}
    fitted = Postprocess(temperature=2.0, selected="youden", threshold=0.3, fitted_on="val")
    assert fitted.decision(BINARY, "pneumonia")["provenance"] == "fitted on val"
    assert Postprocess().decision(BINARY, "normal")["provenance"] == "fixed"


def test_multilabel_decision_per_label():
    post = Postprocess(thresholds={"a": 0.2, "b": 0.9, "c": 0.5})
    assert post.decide(np.array([0.3, 0.8, 0.5]), LABELS) == ["a", "c"]
    assert post.decide(np.zeros(3), LABELS) == []
    d = post.decision(LABELS, [])
    assert d["no_finding"] is True and d["thresholds"] == {"a": 0.2, "b": 0.9, "c": 0.5}
    with pytest.raises(ConfigError, match="unknown label"):
        Postprocess(thresholds={"a": 0.2, "bb": 0.9, "c": 0.5}).decide(np.zeros(3), LABELS)


def test_store_keeps_one_entry_per_checkpoint(tmp_path):
    ckpt = {name: tmp_path / f"{name}.safetensors" for name in ("best", "last")}
    for name, f in ckpt.items():
        f.write_bytes(name.encode() * 100)
    best = Postprocess(temperature=1.5, fitted_on="val", checkpoint=checkpoint_identity(ckpt["best"], {"epoch": 3}, "best"))
    last = Postprocess(temperature=0.7, fitted_on="val", checkpoint=checkpoint_identity(ckpt["last"], {"epoch": 5}, "last"))
    write_postprocess(tmp_path, "best", best)
    write_postprocess(tmp_path, "last", last)
    store = json.loads((tmp_path / "postprocess.json").read_text())
    assert set(store) == {"best", "last"}
    assert read_postprocess(tmp_path, "best", ckpt["best"]) == best
    assert read_postprocess(tmp_path, "last", ckpt["last"]).temperature == 0.7


def test_an_entry_fitted_on_another_version_of_the_checkpoint_is_not_used(tmp_path, caplog):
    f = tmp_path / "best.safetensors"
    f.write_bytes(b"epoch 3 weights")
    write_postprocess(tmp_path, "best", Postprocess(temperature=1.5, checkpoint=checkpoint_identity(f, {"epoch": 3}, "best")))
    f.write_bytes(b"epoch 7 weights")  # training went on (resume) and replaced best
    assert read_postprocess(tmp_path, "best", f) is None
    assert "earlier version of that checkpoint" in caplog.text
