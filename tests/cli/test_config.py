"""`medcls config show`: the resolved config without training; valid YAML that `train` accepts."""

from __future__ import annotations

import yaml

from medcls.cli.main import main
from medcls.config import load_config


def test_show_resolves_autos_and_round_trips(capsys, pneumonia_npz, tmp_path):
    args = ["config", "show", "--config", "configs/pneumoniamnist.yaml", "--set", f"data.options.path={pneumonia_npz}",
            "--set", "data.cache=off", "--set", "train.lr=0.01"]
    assert main(args) == 0
    out = capsys.readouterr().out
    doc = yaml.safe_load(out)
    assert doc["data"]["cache"] == "off" and doc["train"]["lr"] == 0.01
    assert doc["transforms"]["preset"] == "xray" and isinstance(doc["train"]["epochs"], int)  # autos resolved
    assert doc["model"]["stem"] == "small" and doc["transforms"]["image_size"] == 28 and doc["model"]["in_chans"] == 1
    assert "model.stem=small" in out and "train.amp (by device)" in out
    f = tmp_path / "resolved.yaml"
    f.write_text(out)
    cfg = load_config(f)
    assert cfg.to_dict() == doc


def test_show_without_data_keeps_autos(capsys):
    assert main(["config", "show", "--no-data", "--set", "train.amp=off"]) == 0
    out = capsys.readouterr().out
    doc = yaml.safe_load(out)
    assert doc["train"]["epochs"] == "auto" and doc["train"]["amp"] == "off" and "--no-data" in out
