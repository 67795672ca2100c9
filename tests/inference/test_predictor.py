"""``Predictor``: its backends against evaluation, the inputs it takes, refusals and the ONNX head check."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from medcls import Predictor
from medcls.errors import DataError, OutOfDistributionError, RunError


@pytest.mark.parametrize("backend,tol", [("torch", 1e-5), ("onnx", 1e-4), ("int8", 0.1)])
def test_predictor_backends_match_evaluation(bundle, evaluated_run, pneumonia_arrays, backend, tol):
    out, _ = bundle
    df = pd.read_csv(evaluated_run.path / "eval-test" / "predictions.csv")
    idx = [int(s.split("/")[1]) for s in df["id"][:16]]
    pred = Predictor.load(out, backend=backend)
    res = pred.predict([pneumonia_arrays["test_images"][i] for i in idx])
    got = np.array([r["probabilities"]["pneumonia"] for r in res])
    assert np.abs(got - df["prob_pneumonia"][:16].to_numpy()).max() <= tol
    if backend != "int8":
        assert [r["predicted"] for r in res] == list(df["decision"][:16])


def test_image_only_predictor_refuses_metadata(tmp_path):
    from medcls.artefact import ModelSpec, Postprocess
    from medcls.data.spec import DatasetSpec
    from medcls.models import create_model
    from medcls.transforms import PreprocessConfig

    spec = ModelSpec("test_resnet", DatasetSpec("x", "binary", ("a", "b"), 1), PreprocessConfig(size=32, in_chans=1))
    pred = Predictor(spec, Postprocess(), model=create_model("test_resnet", 2, in_chans=1).eval())
    img = np.zeros((32, 32), np.uint8)
    assert "inputs_used" not in pred.predict([img])[0]
    with pytest.raises(DataError, match="image only"):
        pred.predict([img], metadata=[{"age": 3}])


def test_refuse_ood_turns_a_flagged_image_into_an_error(bundle, pneumonia_arrays):
    pred = Predictor.load(bundle[0], backend="onnx", refuse_ood=True)
    pred.ood.threshold = -1.0  # every image is now out of distribution
    with pytest.raises(OutOfDistributionError, match="out of distribution"):
        pred.predict([pneumonia_arrays["test_images"][0]])
    (r,) = pred.predict([pneumonia_arrays["test_images"][0]], on_error="skip")
    assert "out of distribution" in r["error"]["message"] and "probabilities" not in r


def test_an_onnx_head_that_disagrees_with_the_classes_is_refused(bundle, tmp_path):
    """Files and metadata that each hash fine but do not belong together (a hand-assembled bundle)."""
    from medcls.artefact import bundle_digest

    bad = tmp_path / "edited"
    shutil.copytree(bundle[0], bad)
    info = json.loads((bad / "bundle.json").read_text())
    ds = info["model"]["dataset"]
    ds["class_names"] = [*ds["class_names"], "other"]
    ds["task"] = "multiclass"
    ds.pop("positive_index", None)
    info["model"]["num_classes"] = 3
    info.pop("integrity")
    info["integrity"] = {"sha256": bundle_digest(info)}
    (bad / "bundle.json").write_text(json.dumps(info, indent=2))
    with pytest.raises(RunError, match="outputs 2 logits but bundle.json names 3 classes"):
        Predictor.load(bad, backend="onnx")
