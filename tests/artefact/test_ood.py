"""The out-of-distribution gate: fitted at export, carried by the bundle, the same under torch and ONNX
Runtime, in every Predictor result and the CLI's CSV; old bundles still predict (refusal: tests/inference)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from medcls import Predictor
from medcls.artefact import bundle_digest
from medcls.artefact.ood import OOD_FILE, OodGate, fit_gate
from medcls.cli.main import main
from medcls.testing.ood_images import KINDS, render


def test_gate_accepts_the_target_share_of_val_and_flags_far_points(tmp_path):
    rng = np.random.default_rng(0)
    train = np.r_[rng.normal(0, 1, (400, 16)), rng.normal(3, 1, (400, 16))]
    labels = np.r_[np.zeros(400), np.ones(400)]
    val = np.r_[rng.normal(0, 1, (500, 16)), rng.normal(3, 1, (500, 16))]
    gate, info = fit_gate(train, labels, val, "binary")
    assert info["classes"] == 2 and abs(info["val_accept"] - 0.95) < 0.005
    fresh = np.r_[rng.normal(0, 1, (2000, 16)), rng.normal(3, 1, (2000, 16))]
    assert 0.92 < np.mean(gate.score(fresh) <= gate.threshold) < 0.98  # holds on unseen in-distribution data
    assert np.all(gate.score(rng.normal(12, 1, (50, 16))) > gate.threshold)  # far from both classes
    assert gate.score(np.full((1, 16), 3.0))[0] < gate.score(np.full((1, 16), 1.5))[0]  # nearest class counts
    gate.save(tmp_path / OOD_FILE)
    again = OodGate.load(tmp_path / OOD_FILE)
    assert again.threshold == gate.threshold
    np.testing.assert_allclose(again.score(fresh[:20]), gate.score(fresh[:20]), rtol=1e-4)


def test_bundle_gate_is_fitted_on_the_run_and_scores_alike_in_torch_and_onnx(bundle, pneumonia_arrays):
    out, info = bundle
    ood = info["checks"]["ood"]
    assert ood["method"] == "mahalanobis" and ood["n_train"] == 128 and ood["n_val"] == 128
    assert abs(ood["val_accept"] - 0.95) <= 0.01
    assert info["checks"]["onnx_parity"]["max_rel_ood_score_diff"] < 1e-3
    images = [*pneumonia_arrays["test_images"][:8], *render("text page", 2, size=64), *render("colour photo", 2)]
    torch_r = Predictor.load(out, backend="torch").predict(images)
    onnx_r = Predictor.load(out, backend="onnx").predict(images)
    for a, b in zip(torch_r, onnx_r, strict=True):
        assert a["ood"]["available"] and a["ood"]["threshold"] == b["ood"]["threshold"]
        assert a["ood"]["score"] == pytest.approx(b["ood"]["score"], rel=1e-3)
        assert a["ood"]["flagged"] == b["ood"]["flagged"]


def test_other_kinds_of_image_score_further_than_chest_x_rays(bundle, pneumonia_arrays):
    """Even a 2-epoch model on 128 images places rendered non-X-ray images further from its training data."""
    pred = Predictor.load(bundle[0], backend="onnx")
    xray = [r["ood"]["score"] for r in pred.predict(list(pneumonia_arrays["test_images"][:64]))]
    for k, kind in enumerate(KINDS):
        other = [r["ood"]["score"] for r in pred.predict(render(kind, 16, size=96, seed=k))]
        assert np.median(other) > np.median(xray), kind


def test_predict_csv_has_the_ood_column(bundle, pneumonia_arrays, tmp_path, capsys):
    from PIL import Image

    paths = []
    for i, arr in enumerate([pneumonia_arrays["test_images"][0], render("text page", 1, size=64)[0]]):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(arr).save(paths[-1])
    assert main(["predict", str(bundle[0]), *map(str, paths), "--csv", str(tmp_path / "p.csv")]) == 0
    df = pd.read_csv(tmp_path / "p.csv")
    assert set(df["ood"]) <= {"ok", "flagged"} and df["ood_score"].notna().all()
    assert capsys.readouterr().out.splitlines()[0].endswith("\tood")


def test_a_bundle_without_a_gate_still_predicts(bundle, pneumonia_arrays, tmp_path, caplog):
    old = tmp_path / "old"
    shutil.copytree(bundle[0], old)
    info = json.loads((old / "bundle.json").read_text())
    (old / OOD_FILE).unlink()
    del info["files"][OOD_FILE]
    info.pop("integrity")
    info["integrity"] = {"sha256": bundle_digest(info), "of": "canonical"}
    (old / "bundle.json").write_text(json.dumps(info))
    (r,) = Predictor.load(old, backend="onnx").predict([pneumonia_arrays["test_images"][0]])
    assert r["ood"] == {"available": False} and "probabilities" in r
    assert "no out-of-distribution gate" not in caplog.text
    (r,) = Predictor.load(old, backend="torch", refuse_ood=True).predict([pneumonia_arrays["test_images"][0]])
    assert r["ood"] == {"available": False}
    assert "refuse_ood is set but this model has no out-of-distribution gate" in caplog.text  # said, not silent
