"""Experiment tracking: a run appears in a local MLflow store (params, per-epoch metrics, artefacts, the
bundle as a registered model version) or as TensorBoard event files; off by default; never loses a run."""

from __future__ import annotations

import logging
import sys

import pytest
import yaml

from medcls import train
from medcls.cli.main import main
from medcls.config import build_config
from medcls.errors import ConfigError
from medcls.extras import MissingExtraError

mlflow = pytest.importorskip("mlflow")


def _cfg(make_cfg, root, **tracking):
    cfg = make_cfg(root, limit=64, eval={"n_bootstrap": 0})
    cfg["tracking"] = tracking
    return cfg


def test_mlflow_run_has_params_epoch_metrics_artefacts_and_versioned_bundles(make_cfg, tmp_path, capsys,
                                                                             monkeypatch):
    from mlflow.tracking import MlflowClient

    medcls_log = logging.getLogger("medcls")  # the CLI's console logging is undone after the test
    for attr, value in (("handlers", []), ("propagate", medcls_log.propagate), ("level", medcls_log.level)):
        monkeypatch.setattr(medcls_log, attr, value)
    config = tmp_path / "tiny.yaml"  # through `medcls train`: its evaluation is part of the tracked run
    config.write_text(yaml.safe_dump(_cfg(make_cfg, tmp_path, backend="mlflow")))
    assert main(["train", "--config", str(config)]) == 0
    (run_path,) = tmp_path.glob("tiny-*")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tracking: MLflow run")]
    assert len(said) == 2 and uri in said[0]  # one line at the start and one at the end: where it went
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny")
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.status == "FINISHED"
    assert r.data.params["train.epochs"] == "2" and r.data.params["model.name"] == "resnet18"
    assert [m.step for m in client.get_metric_history(r.info.run_id, "val_auc")] == [1, 2]
    assert "train_loss" in r.data.metrics and "test_auc" in r.data.metrics
    logged = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "history.csv", "eval-test"} <= logged and "checkpoints" not in logged
    evaluated = {a.path.split("/")[-1] for a in client.list_artifacts(r.info.run_id, "eval-test")}
    assert {"report.html", "model_card.md", "roc.png"} <= evaluated

    for k in (1, 2):  # each export is a new version of the run's registered model
        assert main(["export", str(run_path), "-o", str(tmp_path / f"bundle{k}")]) == 0
    versions = client.search_model_versions("name='tiny'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert {v.run_id for v in versions} == {r.info.run_id}
    assert "bundle.json" in {a.path.split("/")[-1] for a in client.list_artifacts(r.info.run_id, "bundle")}


def test_tensorboard_writes_one_scalar_per_epoch(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(_cfg(make_cfg, tmp_path, backend="tensorboard"))
    logdir = tmp_path / "tensorboard" / run.path.name
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val_auc")] == [1, 2]
    assert len(acc.Scalars("train_loss")) == 2
    assert not (tmp_path / "mlflow.db").exists()


def test_off_by_default_and_off_means_none(make_cfg, tmp_path):
    assert build_config({}).tracking.backend == "none"
    assert build_config({}, ["tracking.backend=off"]).tracking.backend == "none"
    assert build_config({"tracking": {"backend": False}}).tracking.backend == "none"
    assert build_config({"tracking": False}).tracking.backend == "none"  # YAML `tracking: off`
    assert build_config({}, ["tracking=off"]).tracking.backend == "none"
    assert build_config({"tracking": "tensorboard"}).tracking.backend == "tensorboard"
    with pytest.raises(ConfigError, match="tracking"):
        build_config({"tracking": {"backend": "mlflow", "exeriment": "x"}})  # a typo'd key
    with pytest.raises(ConfigError, match="backend"):
        build_config({}, ["tracking.backend=mlfow"])
    run = train(make_cfg(tmp_path, limit=32, stem="small", train={"epochs": 1}))
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "tensorboard").exists()
    assert not (run.path / "tracking.json").exists()


def test_a_store_that_fails_warns_once_and_the_run_completes(make_cfg, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="medcls")
    (tmp_path / "a-file").write_text("not a directory")
    cfg = _cfg(make_cfg, tmp_path, backend="mlflow", uri=f"sqlite:///{tmp_path / 'a-file' / 'm.db'}")
    run = train(cfg)
    assert (run.path / "checkpoints" / "best.safetensors").is_file()
    warnings = [r.message for r in caplog.records if r.message.startswith("tracking:")]
    assert len(warnings) == 1 and "without tracking" in warnings[0]


def test_missing_extra_is_one_line_before_training(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'medcls\[tracking\]'"):
        train(_cfg(make_cfg, tmp_path / "runs", backend="mlflow"))
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_a_run_that_crashes_is_marked_failed_not_left_running(make_cfg, tmp_path):
    from mlflow.tracking import MlflowClient

    def crash(trainer, epoch, row):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        train(_cfg(make_cfg, tmp_path, backend="mlflow", experiment="crashy"), callbacks=[crash])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("crashy").experiment_id])
    assert r.info.status == "FAILED"
