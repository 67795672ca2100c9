"""``medcls ablate`` from the CLI on a BTXRD-style fixture (dataset.xlsx with age, gender, site, view)."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from medcls.cli.main import main
from medcls.testing.multimodal import write_btxrd_like

pytestmark = pytest.mark.slow


def test_ablate_cli_on_btxrd_fixture(tmp_path, pneumonia_arrays, capsys):
    xlsx, _ = write_btxrd_like(tmp_path / "BTXRD", pneumonia_arrays["train_images"], n=90)
    cfg = {"name": "btx", "output_dir": str(tmp_path / "runs"),
           "data": {"source": f"btxrd:{xlsx.parent}", "min_val_size": 8, "test_fraction": 0.3},
           "transforms": {"image_size": 28, "strength": 0.0},
           "inputs": {"numeric": ["age"], "categorical": ["gender", "site", "view"]},
           "model": {"name": "test_resnet", "fusion_dim": 16},
           "train": {"epochs": 1, "batch_size": 32, "progress": False, "amp": "off"},
           "eval": {"n_bootstrap": 50}}
    path = tmp_path / "btx.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["ablate", "--config", str(path), "--run-dir", str(tmp_path / "abl")])
    out = capsys.readouterr().out
    assert code in (0, None)
    assert "ablation written to" in out and "metadata only" in out and "gated" in out
    table = pd.read_csv(tmp_path / "abl" / "ablation.csv")
    assert list(table["variant"]) == ["none", "meta_only", "concat", "cross_attention", "gated"]
    assert table["test_auc"].between(0, 1).all() and table["auc_low"].notna().all()
    summary = yaml.safe_load((tmp_path / "abl" / "concat" / "config.yaml").read_text())
    assert summary["model"]["fusion"] == "concat"


def test_ablate_needs_inputs(tmp_path, capsys):
    code = main(["ablate", "--set", f"output_dir={tmp_path}"])
    assert code == 2 and "declare extra inputs" in capsys.readouterr().err
