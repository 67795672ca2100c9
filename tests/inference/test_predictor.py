"""``Predictor``: torch, ONNX and INT8 backends agree with evaluation and with each other; the result fields; a run
directory and its bundle predict alike; bad inputs and options are one-line errors of medcls's classes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medcls import Predictor
from medcls.errors import ConfigError, DataError, MedclsError, OutOfDistributionError, RunError


@pytest.fixture(scope="module")
def images(pneumonia_arrays) -> list[np.ndarray]:
    return list(pneumonia_arrays["test_images"][:16])


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


@pytest.mark.parametrize("backend,tol", [("onnx", 1e-4), ("int8", 0.1)])
def test_onnx_backends_give_the_torch_result_within_tolerance(bundle, images, backend, tol):
    ref = Predictor.load(bundle[0], backend="torch").predict(images)
    got = Predictor.load(bundle[0], backend=backend).predict(images)
    for a, b in zip(ref, got, strict=True):
        assert a.keys() == b.keys()
        assert b["model"] == {**a["model"], "backend": backend}
        assert b["probabilities"] == pytest.approx(a["probabilities"], abs=tol)
        assert {k: b[k] for k in ("task", "calibrated", "temperature", "decision")} == \
            {k: a[k] for k in ("task", "calibrated", "temperature", "decision")}
    if backend == "onnx":  # INT8 moves probabilities near the threshold across it; its own gate is checked at export
        assert [r["predicted"] for r in got] == [r["predicted"] for r in ref]
        assert [r["ood"]["flagged"] for r in got] == [r["ood"]["flagged"] for r in ref]


def test_a_binary_result_has_every_field(bundle, images):
    pred = Predictor.load(bundle[0], backend="onnx")
    assert pred.operating_point == "youden" and 0 < pred.threshold < 1 and pred.temperature > 0
    results = pred.predict(images)
    assert len(results) == len(images)
    for r in results:
        p = r["probabilities"]
        assert list(p) == ["normal", "pneumonia"] and sum(p.values()) == pytest.approx(1.0, abs=1e-6)
        assert r["predicted"] == ("pneumonia" if p["pneumonia"] >= pred.threshold else "normal")
        assert r["decision"] == {"operating_point": "youden", "threshold": pred.threshold,
                                 "positive_class": "pneumonia", "provenance": "fitted on val"}
        assert r["task"] == "binary" and r["calibrated"] is True and r["temperature"] == pred.temperature
        assert r["file"] == "<array>" and "findings" not in r and "inputs_used" not in r
        ood = r["ood"]
        assert ood["available"] and ood["threshold"] == pred.ood.threshold
        assert ood["flagged"] == (ood["score"] > ood["threshold"])
    assert {r["predicted"] for r in results} == {"normal", "pneumonia"}  # the threshold is really applied


def test_paths_bytes_and_arrays_give_the_same_result(bundle, images, tmp_path):
    pred = Predictor.load(bundle[0], backend="onnx")
    path = tmp_path / "x.png"
    Image.fromarray(images[0]).save(path)
    by_path, by_bytes, by_array = pred.predict([path, path.read_bytes(), images[0]])
    assert (by_path["file"], by_bytes["file"], by_array["file"]) == (str(path), "<bytes>", "<array>")
    for r in (by_bytes, by_array):
        assert r["probabilities"] == pytest.approx(by_path["probabilities"], abs=1e-6)


def test_a_multiclass_result_is_the_argmax_of_tempered_softmax():
    from medcls.artefact import ModelSpec, Postprocess
    from medcls.data.spec import DatasetSpec
    from medcls.models import create_model
    from medcls.transforms import PreprocessConfig

    spec = ModelSpec("test_resnet", DatasetSpec("x", "multiclass", ("a", "b", "c"), 1), PreprocessConfig(size=32, in_chans=1))
    torch.manual_seed(0)
    model = create_model("test_resnet", 3, in_chans=1).eval()
    pred = Predictor(spec, Postprocess(temperature=2.0, fitted_on="val", calibrated=True), model=model)
    imgs = [np.random.default_rng(i).integers(0, 256, (32, 32), dtype=np.uint8) for i in range(6)]
    x = torch.stack([pred.preprocess(im) for im in imgs])
    with torch.no_grad():
        expected = torch.softmax(model(x) / 2.0, dim=1).numpy()
    for r, e in zip(pred.predict(imgs), expected, strict=True):
        assert list(r["probabilities"].values()) == pytest.approx(e.tolist(), abs=1e-6)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["predicted"] == "abc"[int(np.argmax(e))]
        assert r["decision"] == {"operating_point": "argmax"} and r["ood"] == {"available": False}


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


def test_a_run_directory_and_its_bundle_predict_alike(bundle, evaluated_run, images):
    from_run = Predictor.load(evaluated_run.path)
    from_bundle = Predictor.load(bundle[0], backend="torch")
    assert (from_run.info["kind"], from_bundle.info["kind"]) == ("run", "bundle")
    assert from_run.postprocess == from_bundle.postprocess and from_run.model_spec == from_bundle.model_spec
    a, b = from_run.predict(images), from_bundle.predict(images)
    for ra, rb in zip(a, b, strict=True):
        assert ra["probabilities"] == pytest.approx(rb["probabilities"], abs=1e-6)
        assert {k: v for k, v in ra.items() if k not in ("probabilities", "ood")} == \
            {k: v for k, v in rb.items() if k not in ("probabilities", "ood")}
        assert ra["ood"] == {"available": False} and rb["ood"]["available"]  # the gate is fitted at export


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert isinstance(exc.value, MedclsError) and msg and "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def torch_predictor(evaluated_run) -> Predictor:
    return Predictor.load(evaluated_run.path)


def test_a_missing_image_is_one_line(torch_predictor, tmp_path):
    with pytest.raises(DataError) as e:
        torch_predictor.predict([tmp_path / "missing.png"])
    assert _one_line(e) == f"image not found: {tmp_path / 'missing.png'}"


def test_a_directory_given_as_an_image_is_one_line(torch_predictor, tmp_path):
    with pytest.raises(DataError) as e:
        torch_predictor.predict([tmp_path])
    assert _one_line(e) == f"{tmp_path} is a directory, not an image file"


@pytest.mark.parametrize("name,data,text", [
    ("notes.png", b"just some text", "cannot decode image: not a PNG, JPEG"),
    ("cut.png", b"\x89PNG\r\n\x1a\n truncated", "cannot decode image"),
    ("empty.png", b"", "empty file"),
])
def test_a_file_that_is_not_an_image_is_one_line(torch_predictor, tmp_path, name, data, text):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError) as e:
        torch_predictor.predict([tmp_path / name])
    assert text in _one_line(e) and name in str(e.value)


def test_an_object_that_is_no_image_is_one_line(torch_predictor):
    with pytest.raises(DataError) as e:
        torch_predictor.predict([42])
    assert _one_line(e) == "expected an image path, bytes or a numpy array, got int"


def test_skip_reports_bad_images_and_predicts_the_rest(torch_predictor, images, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(images[0]).save(good)
    missing = tmp_path / "missing.png"
    res = torch_predictor.predict([good, missing, images[1]], on_error="skip")
    assert [("probabilities" in r, r["file"]) for r in res] == [(True, str(good)), (False, str(missing)),
                                                                (True, "<array>")]
    assert res[1] == {"file": str(missing), "error": {"message": f"image not found: {missing}"}}
    with pytest.raises(ConfigError) as e:
        torch_predictor.predict([good], on_error="ignore")
    assert _one_line(e) == "on_error must be 'raise' or 'skip', got 'ignore'"


def test_an_unknown_backend_is_one_line_with_a_suggestion(bundle):
    with pytest.raises(ConfigError) as e:
        Predictor.load(bundle[0], backend="onxx")
    assert _one_line(e) == "backend must be one of auto, torch, onnx, int8, got 'onxx'. Did you mean 'onnx'?"


def test_onnx_of_a_run_directory_is_one_line(evaluated_run):
    with pytest.raises(ConfigError) as e:
        Predictor.load(evaluated_run.path, backend="onnx")
    assert "only the torch backend runs it" in _one_line(e) and "medcls export" in str(e.value)


def test_loading_what_is_not_there_is_one_line(tmp_path):
    with pytest.raises(RunError) as e:
        Predictor.load(tmp_path / "nope")
    assert "not found" in _one_line(e)


def test_refuse_ood_without_a_gate_warns_and_predicts(evaluated_run, images, caplog):
    pred = Predictor.load(evaluated_run.path, refuse_ood=True)
    assert "refuse_ood is set but this run has no out-of-distribution gate" in caplog.text
    (r,) = pred.predict(images[:1])
    assert r["ood"] == {"available": False} and "probabilities" in r


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
