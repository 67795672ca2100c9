"""Bundles: contents, export parity, INT8 check, integrity checks (the Predictor on a bundle: tests/inference)."""

from __future__ import annotations

import json

import pytest

from medcls import Predictor
from medcls.cli.main import main
from medcls.errors import ModelError, RunError
from medcls.export import export_bundle


def test_bundle_contents(bundle, evaluated_run):
    out, info = bundle
    assert set(info["files"]) == {"model.safetensors", "model.onnx", "model.int8.onnx", "model.ts", "ood.safetensors",
                                  "drift.safetensors"}
    disk = json.loads((out / "bundle.json").read_text())
    assert disk == json.loads(json.dumps(info))
    model = disk["model"]
    assert model["dataset"]["class_names"] == ["normal", "pneumonia"] and model["dataset"]["positive_index"] == 1
    assert model["preprocess"]["size"] == 28 and model["in_chans"] == 1 and model["architecture"] == "resnet18"
    assert disk["model"] == json.loads((evaluated_run.path / "model.json").read_text())  # the same artefact
    post = json.loads((evaluated_run.path / "postprocess.json").read_text())["best"]
    assert disk["postprocess"] == post and disk["calibrated"] is True
    assert post["selected"] == "youden" and post["fitted_on"] == "val"
    assert disk["source"]["checkpoint"] == "best" and "/" not in disk["source"]["run"]
    assert disk["checks"]["onnx_parity"]["max_abs_prob_diff"] <= 1e-4
    assert disk["checks"]["int8"]["calibration_images"] == 64
    assert abs(disk["checks"]["int8"]["auc_drop"]) < 0.2


def test_bundle_is_never_overwritten_and_checks_integrity(bundle, evaluated_run, tmp_path):
    out, _ = bundle
    with pytest.raises(RunError, match="already exists"):
        export_bundle(evaluated_run, out)
    import shutil

    bad = tmp_path / "tampered"
    shutil.copytree(out, bad)
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"x")
    with pytest.raises(RunError, match="sha256"):
        Predictor.load(bad, backend="onnx")
    with pytest.raises(RunError, match="neither a medcls run directory"):
        Predictor.load(tmp_path)


def test_int8_refused_beyond_bound(evaluated_run, tmp_path):
    with pytest.raises(ModelError, match="INT8 model loses"):
        export_bundle(evaluated_run, tmp_path / "q", quantize="int8", max_int8_auc_drop=-1.0, n_calibration=32)
    assert not (tmp_path / "q").exists()  # nothing half-written


def test_cli_export_and_predict_with_onnx(evaluated_run, tmp_path, capsys, pneumonia_arrays):
    from PIL import Image

    out = tmp_path / "cli-bundle"
    assert main(["export", str(evaluated_run.path), "-o", str(out), "--format", "onnx"]) == 0
    assert "ONNX parity" in capsys.readouterr().out
    img = tmp_path / "x.png"
    Image.fromarray(pneumonia_arrays["test_images"][0]).save(img)
    assert main(["predict", str(out), str(img), "--backend", "onnx"]) == 0
    assert "pneumonia" in capsys.readouterr().out
    assert main(["predict", str(evaluated_run.path), str(img), "--backend", "onnx"]) == 2
    assert "only the torch backend" in capsys.readouterr().err
    assert main(["predict", str(out), str(img), "--backend", "tensorrt"]) == 2


def test_uncalibrated_export_says_so(evaluated_run, tmp_path, caplog):
    import shutil

    run = shutil.copytree(evaluated_run.path, tmp_path / "run")
    (run / "postprocess.json").unlink()
    info = export_bundle(run, tmp_path / "b", onnx=False)
    assert info["calibrated"] is False and info["postprocess"]["temperature"] == 1.0
    assert any("UNCALIBRATED" in n and "medcls calibrate" in n for n in info["notes"])
    assert "UNCALIBRATED" in caplog.text


def test_export_last_ships_the_calibration_of_last(evaluated_run, tmp_path):
    info = export_bundle(evaluated_run, tmp_path / "last", checkpoint="last", onnx=False)
    store = json.loads((evaluated_run.path / "postprocess.json").read_text())
    assert info["postprocess"] == store["last"] and info["source"]["checkpoint"] == "last"
    assert info["postprocess"]["checkpoint"]["name"] == "last"


def _edited(out, tmp_path, edit, name="edited"):
    import shutil

    bad = tmp_path / name
    shutil.copytree(out, bad)
    info = json.loads((bad / "bundle.json").read_text())
    edit(info)
    (bad / "bundle.json").write_text(json.dumps(info, indent=2))
    return bad


@pytest.mark.parametrize("edit", [
    lambda i: i["model"]["dataset"].update(class_names=i["model"]["dataset"]["class_names"][::-1]),
    lambda i: i["postprocess"].update(temperature=-1.0, threshold=7.0),
    lambda i: i["postprocess"].update(threshold=0.01),  # plausible, still not what was exported
], ids=["swapped-classes", "nonsense-calibration", "other-threshold"])
def test_an_edited_bundle_json_is_refused_in_one_line(bundle, tmp_path, capsys, edit):
    out, _ = bundle
    bad = _edited(out, tmp_path, edit)
    with pytest.raises(RunError, match="modified after export"):
        Predictor.load(bad, backend="onnx")
    assert main(["predict", str(bad), str(bad / "model.onnx"), "--backend", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "modified after export" in err[0]


def test_reformatting_bundle_json_keeps_it_valid(bundle, tmp_path):
    """The digest is over the canonical form: re-indenting or reordering keys is not tampering."""
    out, _ = bundle
    same = _edited(out, tmp_path, lambda i: None)
    info = json.loads((same / "bundle.json").read_text())
    (same / "bundle.json").write_text(json.dumps(dict(reversed(list(info.items()))), sort_keys=False))
    assert list(Predictor.load(same, backend="onnx").spec.class_names) == ["normal", "pneumonia"]


def test_a_format_2_bundle_loads_with_a_warning(bundle, tmp_path, caplog):
    out, _ = bundle

    def to_v2(info):
        info.pop("integrity")
        info["format_version"] = 2

    old = _edited(out, tmp_path, to_v2)
    assert Predictor.load(old, backend="onnx").temperature > 0
    assert "no integrity digest" in caplog.text
    future = _edited(out, tmp_path, lambda i: i.update(format_version=99), "future")
    with pytest.raises(RunError, match="format_version 99"):
        Predictor.load(future, backend="onnx")


def test_leftover_temporary_files_are_ignored_visibly(bundle, tmp_path, caplog):
    out, _ = bundle
    kept = _edited(out, tmp_path, lambda i: None)
    (kept / ".model.onnx.k3j2.tmp").write_bytes(b"half a model")  # a killed atomic write
    assert Predictor.load(kept, backend="onnx").temperature > 0
    assert "ignoring" in caplog.text and ".model.onnx.k3j2.tmp" in caplog.text and "safe to delete" in caplog.text
