"""Pruned export: fewer parameters, ONNX (and INT8) parity, the one loader rebuilds it, CLI errors in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medcls import Predictor
from medcls.artefact import open_artefact
from medcls.cli.main import main
from medcls.export import export_bundle
from medcls.extras import MissingExtraError
from medcls.models.pruning import count_parameters


@pytest.fixture(scope="module")
def pruned(evaluated_run, tmp_path_factory):
    """The evaluated tiny run pruned at 0.5, fine-tuned 1 epoch, exported with ONNX and INT8."""
    pytest.importorskip("torch_pruning")  # the 'prune' extra
    out = tmp_path_factory.mktemp("pruned") / "bundle"
    info = export_bundle(evaluated_run, out, prune=0.5, prune_epochs=1, quantize="int8", max_int8_auc_drop=1.0,
                         n_calibration=32)
    return out, info


def test_pruned_bundle_is_smaller_and_records_pruning(pruned, evaluated_run):
    out, info = pruned
    p = info["pruning"]
    unpruned, _ = evaluated_run.build_model("best")
    assert p["params_before"] == count_parameters(unpruned)
    assert p["params_after"] < 0.35 * p["params_before"]  # half the channels: about a quarter of the weights
    assert p["ratio"] == 0.5 and p["fine_tune_epochs"] == 1 and p["fine_tune"]["epochs"] == 1
    assert all(0.0 <= p[k] <= 1.0 for k in ("val_auc_before", "val_auc_after"))
    assert info["model"]["pruning"]["ratio"] == 0.5 and info["model"]["pruning"]["history"]
    assert info["checks"]["onnx_parity"]["max_abs_prob_diff"] <= 1e-4
    assert "val_auc_int8" in info["checks"]["int8"]
    assert info["postprocess"]["fitted_on"] == "val" and info["postprocess"]["checkpoint"]["pruned"] == 0.5
    assert info["files"]["model.safetensors"]["bytes"] < 0.35 * evaluated_run.checkpoint_path().stat().st_size
    card = (out / "model_card.md").read_text()
    assert "0.50 of the channels removed" in card and f"{p['params_after']:,}" in card and "model_card.md" in info["files"]
    run_spec = json.loads((evaluated_run.path / "model.json").read_text())
    assert "pruning" not in run_spec  # the source run is untouched


def test_one_loader_rebuilds_the_pruned_model(pruned):
    out, info = pruned
    model, _ = open_artefact(out).build_model()
    assert count_parameters(model) == info["pruning"]["params_after"]


def test_predictor_backends_agree_on_pruned_bundle(pruned, pneumonia_arrays):
    out, _ = pruned
    images = list(pneumonia_arrays["test_images"][:12])
    probs = {}
    for backend in ("torch", "onnx", "int8"):
        res = Predictor.load(out, backend=backend).predict(images)
        probs[backend] = np.array([r["probabilities"]["pneumonia"] for r in res])
        assert all(r["predicted"] in ("normal", "pneumonia") for r in res)
    assert np.abs(probs["torch"] - probs["onnx"]).max() <= 1e-4
    assert np.abs(probs["int8"] - probs["onnx"]).max() <= 0.2


@pytest.mark.parametrize("args,expected", [
    (["--prune", "0"], "(0, 0.95]"), (["--prune", "0.96"], "(0, 0.95]"), (["--prune", "-0.3"], "(0, 0.95]"),
    (["--prune", "0.5", "--prune-epochs", "-1"], "--prune-epochs"),
])
def test_cli_rejects_bad_prune_requests_in_one_line(evaluated_run, tmp_path, capsys, args, expected):
    out = tmp_path / "b"
    assert main(["export", str(evaluated_run.path), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and not out.exists()


def test_cli_refuses_to_prune_a_pruned_bundle(pruned, tmp_path, capsys):
    out, _ = pruned
    assert main(["export", str(out), "-o", str(tmp_path / "again"), "--prune", "0.3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already pruned" in err[0]


def test_missing_torch_pruning_names_the_extra(evaluated_run, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # import torch_pruning now raises ImportError
    with pytest.raises(MissingExtraError, match=r"medcls\[prune\]"):
        export_bundle(evaluated_run, tmp_path / "b", prune=0.5)
    assert not (tmp_path / "b").exists()


def test_fine_tune_that_lowers_val_auc_is_not_kept(evaluated_run, monkeypatch):
    pytest.importorskip("torch_pruning")  # the 'prune' extra
    from medcls.data.sources import load_data
    from medcls.export import prune as prune_mod

    def ruin(run, model, data, epochs, lr_scale, device):  # a "fine-tune" that destroys the classifier
        for p in model.net.get_classifier().parameters():
            p.data.zero_()
        return {"epochs": epochs}

    monkeypatch.setattr(prune_mod, "_fine_tune", ruin)
    model, _ = evaluated_run.build_model("best")
    out = prune_mod.prune_for_export(evaluated_run, model, load_data(evaluated_run.config.data), ratio=0.3, epochs=1)
    r = out.report
    assert "before fine-tuning" in r["fine_tune"]["kept"]
    assert r["val_auc_after"] == r["val_auc_pruned_before_fine_tune"] > 0.5
    assert out.model.net.get_classifier().weight.abs().sum() > 0  # the untuned weights are back
    assert out.postprocess.fitted_on == "val"
