"""`medcls export --triton`: a Triton model repository that Triton's own config schema parses."""

from __future__ import annotations

import filecmp
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from medcls.errors import RunError
from medcls.export.triton import write_triton_repository


def model_config_proto():
    """Triton's ModelConfig message, from the model_config.proto that tritonclient ships (no grpc needed)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed (dev extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    mod_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.ModelConfig


def test_the_repository_parses_as_a_triton_model_config(bundle, tmp_path):
    from google.protobuf import text_format

    out, info = bundle
    model = write_triton_repository(out, tmp_path / "repo")
    assert model == tmp_path / "repo" / "bundle"
    assert filecmp.cmp(model / "1" / "model.onnx", out / "model.onnx", shallow=False)
    cfg = text_format.Parse((model / "config.pbtxt").read_text(), model_config_proto()())
    assert cfg.name == "bundle" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 64
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("image", [1, 28, 28])]
    assert [o.name for o in cfg.output] == ["logits", "features"] and list(cfg.output[0].dims) == [2]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert json.loads(params["medcls_class_names"]) == info["model"]["dataset"]["class_names"]
    assert float(params["medcls_temperature"]) == pytest.approx(info["postprocess"]["temperature"])
    with pytest.raises(RunError, match="already exists"):
        write_triton_repository(out, tmp_path / "repo")


def test_the_cli_checks_the_repository_before_exporting(evaluated_run, tmp_path):
    (tmp_path / "repo" / "b").mkdir(parents=True)
    cmd = [sys.executable, "-m", "medcls", "export", str(evaluated_run.path), "-o", str(tmp_path / "b"),
           "--triton", str(tmp_path / "repo")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "already exists" in r.stderr and not (tmp_path / "b").exists()
    r = subprocess.run([*cmd[:-2], "--format", "safetensors", "--triton", str(tmp_path / "r2")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "--format onnx" in r.stderr
