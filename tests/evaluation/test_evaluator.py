"""evaluate_run: CIs, operating points fitted on val only, calibration, TTA, predict parity."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medcls import evaluate, predict, train
from medcls.data.sources import load_data
from medcls.errors import ConfigError, RunError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, make_cfg):
    cfg = make_cfg(tmp_path_factory.mktemp("ev"), name="ev", limit=128,
                   eval={"n_bootstrap": 500, "operating_point": "youden"})
    return train(cfg)


def test_metrics_have_cis_operating_points_and_calibration(tiny_run):
    m = evaluate(tiny_run, "test")
    df = pd.read_csv(tiny_run.path / "eval-test" / "predictions.csv")
    y = (df["label"] == "pneumonia").to_numpy()
    assert m["auc"] == pytest.approx(roc_auc_score(y, df["prob_pneumonia"]))
    for k in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "kappa"):
        ci = m["ci"][k]
        if k in ("auc", "accuracy", "sensitivity") or not np.isnan(m[k]):  # npv is undefined with no negative call
            assert ci["low"] <= m[k] <= ci["high"], k
    assert m["auc_delong"]["low"] <= m["auc"] <= m["auc_delong"]["high"]
    ops = m["operating_points"]
    assert {"default", "youden", "max_f1", "target_sensitivity", "target_specificity"} <= set(ops)
    assert ops["chosen_on"] == "val"
    post = json.loads((tiny_run.path / "postprocess.json").read_text())["best"]
    assert post["fitted_on"] == "val" and post["selected"] == "youden"
    assert post["threshold"] == ops["youden"]["threshold"]
    cal = m["calibration"]
    assert cal["temperature"] == post["temperature"] > 0
    assert set(cal["before"]) == {"ece", "mce", "brier", "nll"}
    # decisions in predictions.csv follow the selected operating point
    t = post["threshold"]
    expect = np.where(df["prob_pneumonia"] >= t, "pneumonia", "normal")
    assert (df["decision"] == expect).all()
    for f in ("roc.png", "pr.png", "reliability.png", "confusion.png", "decision_curve.png"):
        assert (tiny_run.path / "eval-test" / f).stat().st_size > 1000
    dca, band = m["decision_curve"], m["roc_band"]
    assert len(dca["model"]) == len(dca["thresholds"]) == 99 and dca["prevalence"] == pytest.approx(
        (df["label"] == "pneumonia").mean())
    assert len(band["fpr"]) == 101 and all(lo <= hi for lo, hi in zip(band["tpr_low"], band["tpr_high"], strict=True))


def test_operating_points_never_read_test(tiny_run):
    """By construction: changing every test label leaves the fitted temperature and thresholds unchanged."""
    data = load_data(tiny_run.config.data)
    evaluate(tiny_run, "test", data=data)
    before = json.loads((tiny_run.path / "postprocess.json").read_text())
    data.test.labels = 1 - data.test.labels
    evaluate(tiny_run, "test", data=data, out_dir=tiny_run.path / "eval-flipped")
    after = json.loads((tiny_run.path / "postprocess.json").read_text())
    assert before == after


def test_predict_uses_calibration_and_operating_point(tiny_run, pneumonia_arrays):
    evaluate(tiny_run, "test")
    df = pd.read_csv(tiny_run.path / "eval-test" / "predictions.csv")
    idx = [int(s.split("/")[1]) for s in df["id"][:4]]
    res = predict(tiny_run, [pneumonia_arrays["test_images"][i] for i in idx])
    got = np.array([r["probabilities"]["pneumonia"] for r in res])
    assert np.allclose(got, df["prob_pneumonia"][:4], atol=1e-5)
    assert [r["predicted"] for r in res] == list(df["decision"][:4])
    assert res[0]["decision"]["operating_point"] == "youden"


def test_tta_reported_beside_plain(tiny_run):
    m = evaluate(tiny_run, "test", tta=True)
    assert "tta" in m and 0 <= m["tta"]["auc"] <= 1 and "ci" in m["tta"]


def test_one_class_val_falls_back_with_note(tiny_run, tmp_path):
    import shutil

    from medcls import calibrate

    run = shutil.copytree(tiny_run.path, tmp_path / "copy")
    data = load_data(tiny_run.config.data)
    data.val = data.val.subset(np.flatnonzero(data.val.labels == 1))
    post = calibrate(run, data=data)
    assert "falling back to 0.5" in " ".join(post.notes) and post.threshold == 0.5
    m = evaluate(run, "test")
    assert m["postprocess"]["threshold"] == 0.5 and "falling back to 0.5" in " ".join(m["postprocess"]["notes"])


def test_bad_requests(tiny_run, tmp_path):
    from medcls.errors import DataError

    with pytest.raises(DataError, match="split must be one of"):
        evaluate(tiny_run, "holdout")
    with pytest.raises(RunError, match="checkpoint must be"):
        evaluate(tiny_run, "test", checkpoint="final")
    from medcls.config import load_config

    with pytest.raises(ConfigError, match="eval.target_sensitivity"):
        load_config(None, ["eval.target_sensitivity=1.5"])


def test_run_without_checkpoint(tiny_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run.path, broken)
    (broken / "checkpoints" / "best.safetensors").unlink()
    with pytest.raises(RunError, match="no best checkpoint|checkpoint not found"):
        evaluate(broken, "test")
