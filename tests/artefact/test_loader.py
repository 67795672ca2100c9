"""One loader: a run directory and its exported bundle give the same model, preprocessing and post-processing,
and the calibration of a checkpoint is the one fitted for that checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from medcls import Predictor, evaluate, load
from medcls.artefact import Postprocess, checkpoint_identity, open_artefact, write_postprocess
from medcls.errors import RunError


def test_load_returns_model_preprocess_postprocess(evaluated_run, pneumonia_arrays):
    model, preprocess, post = load(evaluated_run.path, "best")
    assert not model.training and post == evaluated_run.postprocess("best") and post.fitted_on == "val"
    x = torch.stack([preprocess(im) for im in pneumonia_arrays["test_images"][:8]])
    with torch.no_grad():
        p = post.probabilities(model(x).numpy(), "binary")
    assert np.allclose(p.sum(1), 1) and p.shape == (8, 2)


def test_run_and_bundle_load_alike(bundle, evaluated_run, pneumonia_arrays):
    out, _ = bundle
    run, exported = open_artefact(evaluated_run.path), open_artefact(out)
    assert (run.kind, exported.kind) == ("run", "bundle")
    assert exported.spec == run.spec and exported.postprocess() == run.postprocess("best")
    (m1, pre1, _), (m2, pre2, _) = run.load("best"), exported.load()
    x = torch.stack([pre1(im) for im in pneumonia_arrays["test_images"][:4]])
    assert torch.equal(x, torch.stack([pre2(im) for im in pneumonia_arrays["test_images"][:4]]))
    with torch.no_grad():
        assert torch.allclose(m1(x), m2(x))


def test_calibration_of_best_is_used_for_best_after_evaluating_last(evaluated_run, tmp_path):
    """Evaluating `last` neither refits nor overwrites `best`'s calibration; each checkpoint uses its own."""
    run_dir = shutil.copytree(evaluated_run.path, tmp_path / "run")
    best = open_artefact(run_dir).postprocess("best")
    last_file = run_dir / "checkpoints" / "last.safetensors"
    distinct = Postprocess(temperature=3.0, threshold=0.25, selected="youden", fitted_on="val",
                           checkpoint=checkpoint_identity(last_file, {"epoch": 2}, "last"))
    write_postprocess(run_dir, "last", distinct)  # make last's calibration recognisably different
    before = (run_dir / "postprocess.json").read_bytes()
    m = evaluate(run_dir, "test", checkpoint="last")
    assert m["postprocess"]["temperature"] == 3.0 and m["postprocess"]["threshold"] == 0.25
    assert (run_dir / "postprocess.json").read_bytes() == before  # evaluation only reads it
    pred = Predictor.load(run_dir, checkpoint="best")
    assert pred.postprocess == best and pred.temperature == best.temperature != 3.0
    assert Predictor.load(run_dir, checkpoint="last").temperature == 3.0


def test_a_never_calibrated_checkpoint_is_said_so(evaluated_run, tmp_path, caplog):
    run_dir = shutil.copytree(evaluated_run.path, tmp_path / "run")
    store = json.loads((run_dir / "postprocess.json").read_text())
    del store["last"]
    (run_dir / "postprocess.json").write_text(json.dumps(store))
    pred = Predictor.load(run_dir, checkpoint="last")
    assert pred.temperature == 1.0 and not pred.postprocess.fitted
    assert "not calibrated" in caplog.text and "medcls calibrate" in caplog.text


def test_not_an_artefact(tmp_path):
    with pytest.raises(RunError, match="not found"):
        open_artefact(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(RunError, match="is a file"):
        open_artefact(tmp_path / "f.txt")
    with pytest.raises(RunError, match="neither a medcls run directory"):
        open_artefact(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(RunError, match="unreadable"):
        open_artefact(tmp_path)


def test_flipped_bytes_in_a_checkpoint_are_refused_not_predicted(evaluated_run, tmp_path, capsys):
    """safetensors checks the header, not the tensor data: 4096 flipped bytes loaded and predicted nonsense."""
    from medcls.cli import main

    run_dir = shutil.copytree(evaluated_run.path, tmp_path / "run")
    ckpt = run_dir / "checkpoints" / "best.safetensors"
    data = bytearray(ckpt.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4096] = bytes(b ^ 0xFF for b in data[mid:mid + 4096])
    ckpt.write_bytes(bytes(data))
    with pytest.raises(RunError, match="does not match the sha256 recorded when it was written"):
        Predictor.load(run_dir)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    assert main(["predict", str(run_dir), str(img)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt" in err[0]
    assert Predictor.load(run_dir, checkpoint="last").temperature > 0  # the intact checkpoint still loads
