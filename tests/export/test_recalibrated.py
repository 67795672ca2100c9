"""`medcls export --recalibration validate-NAME/`: the bundle carries the external recalibration, says so in
bundle.json and its model card, and predicts the recalibrated probabilities; an entry for another checkpoint, or
with pruning, is refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medcls import validate
from medcls.errors import ConfigError, RunError
from medcls.export import export_bundle
from medcls.inference import Predictor
from medcls.testing.shifts import shift


@pytest.fixture(scope="module")
def recalibration(evaluated_run, pneumonia_arrays, tmp_path_factory):
    root = tmp_path_factory.mktemp("recal")
    np.savez(root / "gamma.npz", **{**pneumonia_arrays,
                                    "test_images": shift(pneumonia_arrays["test_images"], "gamma", 1.5)})
    v = validate(evaluated_run.path, "medmnist:pneumoniamnist", options={"path": str(root / "gamma.npz")},
                 split="test", n_bootstrap=50, recalibrate="intercept", out_dir=root, name="gamma")
    return v, root


def test_the_bundle_says_it_was_recalibrated_and_predicts_so(evaluated_run, recalibration, pneumonia_arrays, tmp_path):
    _, root = recalibration
    out = tmp_path / "bundle"
    info = export_bundle(evaluated_run, out, recalibration=root / "validate-gamma")
    r = info["recalibrated"]
    assert info["format_version"] == 4  # a medcls that reads 3 (and would drop the update) refuses it instead
    assert r["method"] == "intercept" and r["fitted_on"]["n"] == 312 and r["fitted_on"]["seed"] == 0
    assert any(n.startswith("RECALIBRATED (intercept)") for n in info["notes"])
    assert json.loads((out / "bundle.json").read_text())["postprocess"]["recalibration"]["slope"] == 1.0
    card = (out / "model_card.md").read_text()
    assert "recalibrated on external data" in card and "## External validation" in card
    assert "### Model updating (recalibration)" in card
    from medcls.export.triton import triton_config

    assert 'key: "medcls_recalibration"' in triton_config("m", out)  # Triton clients get the update too
    images = shift(pneumonia_arrays["test_images"][:16], "gamma", 1.5)
    got = [r["probabilities"]["pneumonia"] for r in Predictor.load(out, backend="onnx").predict(list(images))]
    want = pd.read_csv(root / "validate-gamma" / "predictions.csv")["prob_pneumonia_recalibrated"][:16]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_the_service_says_it_was_recalibrated(evaluated_run, recalibration, pneumonia_arrays, tmp_path):
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from medcls.serve import ServeSettings, create_app

    _, root = recalibration
    export_bundle(evaluated_run, tmp_path / "bundle", recalibration=root / "validate-gamma")
    image = shift(pneumonia_arrays["test_images"][:1], "gamma", 1.5)[0]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    with TestClient(create_app(ServeSettings(bundle=str(tmp_path / "bundle"), backend="onnx"))) as client:
        model = client.get("/v1/model").json()
        got = client.post("/v1/predict", files={"file": ("x.png", buf.getvalue(), "image/png")}).json()
    assert model["bundle"]["recalibrated"]["method"] == "intercept"
    assert any(n.startswith("RECALIBRATED (intercept)") for n in model["bundle"]["notes"])
    want = pd.read_csv(root / "validate-gamma" / "predictions.csv")["prob_pneumonia_recalibrated"][0]
    assert got["probabilities"]["pneumonia"] == pytest.approx(want, abs=1e-4)


def test_an_entry_for_another_checkpoint_or_with_pruning_is_refused(evaluated_run, recalibration, tmp_path):
    _, root = recalibration
    with pytest.raises(RunError, match="holds no recalibration of .* last checkpoint"):
        export_bundle(evaluated_run, tmp_path / "b1", checkpoint="last", recalibration=root / "validate-gamma")
    with pytest.raises(ConfigError, match="fitted for the unpruned model"):
        export_bundle(evaluated_run, tmp_path / "b2", prune=0.3, recalibration=root / "validate-gamma")
    with pytest.raises(RunError, match="no postprocess.json there"):
        export_bundle(evaluated_run, tmp_path / "b3", recalibration=tmp_path)
