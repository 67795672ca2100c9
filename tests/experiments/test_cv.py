"""``medcls cv``: fold runs, out-of-fold predictions, mean ± sd, group-aware folds, test never read."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from medcls.data.sources import load_data
from medcls.errors import ConfigError, RunError
from medcls.experiments import cv
from medcls.experiments._common import HeldOutTable
from medcls.experiments.cv import check_folds, make_folds
from medcls.runs import load_run


@pytest.fixture(scope="module")
def cv3(tmp_path_factory, make_cfg, without_test):
    """3-fold CV of a 1-epoch ResNet-18 on 48 + 48 real PneumoniaMNIST images; test is a tripwire."""
    cv_mod = importlib.import_module("medcls.experiments.cv")  # the package attribute `cv` is the function

    cfg = make_cfg(tmp_path_factory.mktemp("cv"), name="cvt", limit=48, train={"epochs": 1},
                   eval={"n_bootstrap": 0, "batch_size": 64})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cv_mod, "load_data", without_test(load_data))
        result = cv(cfg, folds=3)
    return cfg, result


def test_fold_runs_exist_and_load(cv3):
    _, result = cv3
    assert result.path.name.startswith("cvt-cv-3-")
    assert [r.path.name for r in result.runs] == ["fold-0", "fold-1", "fold-2"]
    for k in range(3):
        run = load_run(result.path / f"fold-{k}")
        assert run.checkpoint_path("best").is_file()
        info = json.loads((run.path / "fold.json").read_text())
        assert info["fold"] == k and info["scored_split"] == "val"
        assert (run.path / "eval-oof" / "metrics.json").is_file()
        assert not (run.path / "eval-test").exists()
        assert run.data_summary["splits"]["test"]["n"] == 0  # the fold runs never saw a test table


def test_oof_covers_every_dev_sample_once(cv3):
    cfg, result = cv3
    from medcls.config import build_config

    data = load_data(build_config(cfg).data)
    dev_ids = data.train.ids + data.val.ids
    oof = pd.read_csv(result.path / "oof_predictions.csv", dtype={"id": str})
    assert sorted(oof["id"]) == sorted(dev_ids)
    assert oof["id"].is_unique
    folds = pd.read_csv(result.path / "folds.csv", dtype={"id": str}).set_index("id")
    assert (oof.set_index("id")["fold"] == folds.loc[oof["id"], "fold"]).all()
    assert sorted(oof["fold"].unique()) == [0, 1, 2]
    probs = oof[["prob_normal", "prob_pneumonia"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # the held-out fold of each run is that run's validation split
    for k, run in enumerate(result.runs):
        held = set(oof.loc[oof["fold"] == k, "id"])
        preds = pd.read_csv(run.path / "eval-oof" / "predictions.csv", dtype={"id": str})
        assert set(preds["id"]) == held


def test_summary_is_numpy_mean_and_sd_of_the_folds(cv3):
    _, result = cv3
    table = pd.read_csv(result.path / "cv_summary.csv").set_index("row")
    folds = table.loc[["fold-0", "fold-1", "fold-2"]]
    summary = json.loads((result.path / "cv_summary.json").read_text())
    for metric in ("auc", "accuracy", "sensitivity", "specificity", "calibration.after.ece"):
        vals = folds[metric].to_numpy(dtype=float)
        vals = vals[~np.isnan(vals)]
        assert summary["mean_sd"][metric]["mean"] == pytest.approx(np.mean(vals))
        assert summary["mean_sd"][metric]["sd"] == pytest.approx(np.std(vals, ddof=1))
        assert table.loc["mean", metric] == pytest.approx(np.mean(vals))
    from sklearn.metrics import roc_auc_score

    oof = result.oof
    assert summary["pooled_oof"]["auc"] == pytest.approx(roc_auc_score(oof["label"] == "pneumonia", oof["prob_pneumonia"]))
    assert any("optimistic" in n for n in summary["notes"]) and any("test split not read" in n for n in summary["notes"])


def test_group_aware_folds_never_split_a_group():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), rng.integers(1, 5, 30))
    labels = (rng.random(30) < 0.4).astype(np.int64)[groups]  # one label per patient
    fold = make_folds(labels, 4, seed=1, groups=groups)
    assert set(fold) == {0, 1, 2, 3}
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1, f"group {g} split across folds"
    for k in range(4):
        assert set(labels[fold == k]) == {0, 1}


def test_stratified_folds_balance_classes():
    labels = np.array([0] * 40 + [1] * 20)
    fold = make_folds(labels, 5, seed=0)
    for k in range(5):
        assert (labels[fold == k] == 1).sum() == 4 and (fold == k).sum() == 12


def test_bad_folds_are_clear_errors():
    y = np.array([0] * 10 + [1] * 3)
    with pytest.raises(ConfigError, match="--folds must be an integer >= 2"):
        check_folds(y, 1, None)
    with pytest.raises(ConfigError, match=r"smallest class \(class index 1 has 3 samples\).*--folds <= 3"):
        check_folds(y, 4, None)
    groups = np.array(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "p", "p", "q"])
    with pytest.raises(ConfigError, match=r"class index 1 has 2 groups"):
        check_folds(y, 3, groups)
    with pytest.raises(ConfigError, match="distinct group ids"):
        check_folds(np.array([0, 1, 0, 1]), 3, np.array(["a", "a", "b", "b"]))


def test_cli_rejects_bad_folds(tmp_path, make_cfg, capsys):
    from medcls.cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(make_cfg(tmp_path / "runs", limit=16)))
    assert main(["cv", "--config", str(cfg), "--folds", "1"]) == 2
    assert "error: --folds must be an integer >= 2" in capsys.readouterr().err
    assert main(["cv", "--config", str(cfg), "--folds", "40"]) == 2
    assert "--folds 40 is larger than the smallest class" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_held_out_table_refuses_reads():
    t = HeldOutTable(reason="held out")
    assert len(t) == 0
    with pytest.raises(RunError, match="held out"):
        t.load(0)
    with pytest.raises(RunError, match="held out"):
        t.subset([0])


def test_cli_inner_val_and_evaluate_test(tmp_path, make_cfg, capsys):
    """--inner-val: each run validates on a slice of its training folds; the held-out fold is scored as test."""
    from medcls.cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(make_cfg(tmp_path / "runs", name="iv", limit=24, train={"epochs": 1},
                                           eval={"n_bootstrap": 0})))
    assert main(["cv", "--config", str(cfg), "--folds", "2", "--inner-val", "0.25", "--seed", "3",
                 "--evaluate-test"]) == 0
    out = capsys.readouterr().out
    assert "2-fold cross-validation" in out and "test mean ± sd" in out and "each fold model evaluated once" in out
    root = next((tmp_path / "runs").glob("iv-cv-2-*"))
    oof = pd.read_csv(root / "oof_predictions.csv", dtype={"id": str})
    assert len(oof) == 48 and oof["id"].is_unique
    for k in range(2):
        info = json.loads((root / f"fold-{k}" / "fold.json").read_text())
        assert info["scored_split"] == "test" and info["seed"] == 3
        assert not set(info["inner_val_ids"]) & set(oof.loc[oof["fold"] == k, "id"])
        assert json.loads((root / f"fold-{k}" / "eval-oof" / "metrics.json").read_text())["split"] == "test"
        assert json.loads((root / f"fold-{k}" / "eval-test" / "metrics.json").read_text())["n"] == 24
    summary = json.loads((root / "cv_summary.json").read_text())
    assert len(summary["test"]["per_fold"]) == 2 and "auc" in summary["test"]["summary"]
