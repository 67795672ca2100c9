"""``medcls tune``: budget parsing, search-space checks, pruning callback, a resumable study that never reads test."""

from __future__ import annotations

import importlib
import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

optuna = pytest.importorskip("optuna")  # the 'tune' extra
import yaml

from medcls.config import build_config, load_config
from medcls.data.sources import load_data
from medcls.errors import ConfigError, RunError
from medcls.experiments import tune
from medcls.experiments.space import load_space, parse_budget, parse_space
from medcls.experiments.tune import PruneCallback

tune_mod = importlib.import_module("medcls.experiments.tune")  # the package attribute `tune` is the function
SPACE = {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
         "train.label_smoothing": {"type": "categorical", "choices": [0.0, 0.1]}}


# ------------------------------------------------------------------ budget and space
@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("900s", 900), ("1h30m", 5400),
                                               ("90", 90), (" 1.5H ", 5400), (None, None)])
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["30 minutes", "abc", "-5m", "m30", "0s", ""])
def test_parse_budget_errors_are_clear(text):
    with pytest.raises(ConfigError, match="--budget"):
        parse_budget(text)


def test_space_validates_keys_and_values():
    base = build_config()
    params = parse_space(SPACE, base)
    assert [p.key for p in params] == ["train.lr", "train.label_smoothing"]
    assert len(load_space(None, base)) >= 5  # the default space is itself valid
    cases = [
        ({"train.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}, r"unknown config key 'train.lrr'\. Did you mean 'train.lr'"),
        ({"trian.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}, r"Did you mean 'train.lr'"),
        ({"data.limit": {"type": "int", "low": 10, "high": 20}}, "cannot be tuned"),
        ({"eval.threshold": {"type": "float", "low": 0.2, "high": 0.8}}, "cannot be tuned"),
        ({"train.lr": {"type": "floot", "low": 1e-4, "high": 1e-2}}, r"float, int or categorical, got 'floot'\. Did you mean 'float'"),
        ({"train.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}, "low < high"),
        ({"train.lr": {"type": "float", "low": 0, "high": 1e-2, "log": True}}, "low must be > 0"),
        ({"train.lr": {"type": "float", "low": 1e-4, "hihg": 1e-2}}, r"unknown field 'hihg'.*Did you mean 'high'"),
        ({"train.label_smoothing": {"type": "float", "low": 0.0, "high": 1.5}}, r"train.label_smoothing=1.5 is not a valid value"),
        ({"train.optimizer": {"type": "categorical", "choices": ["adamw", "lion"]}}, r"train.optimizer='lion' is not a valid"),
        ({"train.class_weights": {"type": "categorical", "choices": [[1, 2]]}}, "non-empty list of numbers"),
        ({"train.lr": 0.01}, "must be a mapping"),
        ([], "expected a mapping"),
    ]
    for raw, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            parse_space(raw, base)


def test_space_file_errors_name_the_file(tmp_path):
    base = build_config()
    with pytest.raises(ConfigError, match="--space file not found"):
        load_space(tmp_path / "nope.yaml", base)
    bad = tmp_path / "space.yaml"
    bad.write_text("train.weight_decy: {type: float, low: 0.0, high: 0.1}\n")
    with pytest.raises(ConfigError, match=r"space.yaml: unknown config key 'train.weight_decy'\. Did you mean 'train.weight_decay'"):
        load_space(bad, base)


# ------------------------------------------------------------------ pruning callback
class FakeTrial:
    def __init__(self, prune: list[bool]) -> None:
        self.prune, self.reports, self.attrs = list(prune), [], {}

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.prune.pop(0)

    def set_user_attr(self, k, v):
        self.attrs[k] = v


def _trainer(best, epochs=5):
    return SimpleNamespace(best_value=best, cfg=SimpleNamespace(train=SimpleNamespace(epochs=epochs)))


def test_prune_callback_reports_running_best_and_prunes():
    trial = FakeTrial([False, False, True])
    cb = PruneCallback(trial, "auc")
    cb(_trainer(0.6), 0, {"val_auc": 0.6})
    cb(_trainer(0.7), 1, {"val_auc": 0.7})
    with pytest.raises(optuna.TrialPruned):
        cb(_trainer(0.7), 2, {"val_auc": 0.65})  # the running best (0.7) is reported, not the epoch's 0.65
    assert trial.reports == [(0, 0.6), (1, 0.7), (2, 0.7)]
    assert trial.attrs["stopped"] == "pruned after epoch 3"


def test_prune_callback_skips_undefined_values_and_stops_at_deadline():
    now = [0.0]
    trial = FakeTrial([False, False, False])
    cb = PruneCallback(trial, "auc", deadline=10.0, clock=lambda: now[0])
    cb(_trainer(None, epochs=3), 0, {"val_auc": float("nan")})
    assert trial.reports == []
    now[0] = 11.0
    with pytest.raises(optuna.TrialPruned, match="budget"):
        cb(_trainer(0.8, epochs=3), 1, {"val_auc": 0.8})
    assert trial.attrs["stopped"].startswith("budget used up")
    cb(_trainer(0.8, epochs=3), 2, {"val_auc": 0.8})  # the last epoch is never cut: the trial completes


def test_prune_callback_with_a_real_median_pruner():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    good.report(0.9, 0)
    study.tell(good, 0.9)
    weak, strong = study.ask(), study.ask()
    PruneCallback(strong, "auc")(_trainer(0.95), 0, {})
    with pytest.raises(optuna.TrialPruned):
        PruneCallback(weak, "auc")(_trainer(0.5), 0, {})


# ------------------------------------------------------------------ the study
@pytest.fixture
def no_test(monkeypatch, without_test):
    """Trials get a test split that fails on any read, and evaluation of any run is forbidden."""

    def forbidden(*a, **k):
        raise AssertionError("tune evaluated a run")

    monkeypatch.setattr(tune_mod, "load_data", without_test(load_data))
    monkeypatch.setattr("medcls.api.evaluate", forbidden)
    monkeypatch.setattr("medcls.evaluation.evaluator.evaluate_run", forbidden)


def _cfg_file(tmp_path, make_cfg, **train):
    cfg = make_cfg(tmp_path / "runs", name="tt", limit=32, train={"epochs": 2, "warmup_epochs": 0.5, **train})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    return cfg, path, space


def test_tune_runs_resumes_and_never_reads_test(tmp_path, make_cfg, no_test, capsys):
    from medcls.cli.main import main

    cfg, cfg_path, space = _cfg_file(tmp_path, make_cfg)
    study_dir = tmp_path / "studies"
    res = tune(cfg, trials=2, space=space, study_dir=study_dir, name="s1", budget="2h")
    d = study_dir / "s1"
    assert res.path == d and (d / "study.db").is_file() and (d / "trials.png").is_file()
    assert sorted(res.trials["number"]) == [0, 1] and set(res.trials["state"]) == {"complete"}
    # resume through the CLI: same study, one more trial, numbers continue
    assert main(["tune", "--config", str(cfg_path), "--space", str(space), "--study-dir", str(study_dir),
                 "--name", "s1", "--trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "best config:" in out and "test split never read" in out
    trials = pd.read_csv(d / "trials.csv")
    assert list(trials["number"]) == [0, 1, 2] and trials["number"].is_unique
    assert set(trials.columns) >= {"number", "state", "value", "duration_s", "train.lr", "train.label_smoothing", "run_dir"}
    with sqlite3.connect(d / "study.db") as con:
        assert con.execute("select count(*) from trials").fetchone()[0] == 3
    # every trial is a normal run, marked, never evaluated
    for _, row in trials.iterrows():
        run_dir = Path(row["run_dir"])
        assert run_dir.parent == d / "trials"
        info = json.loads((run_dir / "trial.json").read_text())
        assert info["state"] == "complete" and info["number"] == row["number"]
        assert not list(run_dir.glob("eval-*"))
    # the best config is a full config that trains as is, with the best trial's values
    best = load_config(d / "best_config.yaml")
    top = trials.loc[trials["value"].idxmax()]
    assert best.train.lr == pytest.approx(top["train.lr"]) and best.train.label_smoothing == top["train.label_smoothing"]
    assert best.train.epochs == 2 and best.data.limit == 32 and best.name == "tt-tuned"
    # --status needs no config: trials by state and worker, the best so far
    assert main(["tune", "--status", "--study-dir", str(study_dir), "--name", "s1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "study s1 in sqlite:///" in out and "3 complete" in out and "best: trial" in out
    assert main(["tune", "--status", "--study-dir", str(study_dir), "--name", "s2"]) == 2
    assert "no study 's2' in" in capsys.readouterr().err
    # the same command again: the target is reached, nothing new runs
    res3 = tune(cfg, trials=3, space=space, study_dir=study_dir, name="s1")
    assert len(res3.trials) == 3
    # a different config cannot silently join the study
    with pytest.raises(RunError, match="different config keys train.epochs"):
        tune(cfg, trials=4, space=space, study_dir=study_dir, name="s1", overrides=["train.epochs=3"])
    assert not (d / "tune.lock").exists()


def test_tune_cli_errors(tmp_path, make_cfg, capsys):
    from medcls.cli.main import main

    _, cfg_path, space = _cfg_file(tmp_path, make_cfg)
    assert main(["tune", "--config", str(cfg_path), "--budget", "soon"]) == 2
    assert "error: --budget expects a wall-clock duration such as 900s, 30m, 2h" in capsys.readouterr().err
    assert main(["tune", "--config", str(cfg_path)]) == 2
    assert "--budget (e.g. 30m) and/or a number of --trials" in capsys.readouterr().err
    space.write_text("train.lrr: {type: float, low: 0.001, high: 0.01}\n")
    assert main(["tune", "--config", str(cfg_path), "--trials", "2", "--space", str(space)]) == 2
    assert "Did you mean 'train.lr'" in capsys.readouterr().err
    assert main(["tune", "--config", str(cfg_path), "--trials", "2", "--pruner", "medain"]) == 2
    assert "Did you mean 'median'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_tune_marks_pruned_trials_and_keeps_their_runs(tmp_path, make_cfg, no_test, monkeypatch):
    """Every trial after the first is pruned after epoch 1: its run stays loadable and says so."""
    from medcls.runs import load_run

    cfg, _, space = _cfg_file(tmp_path, make_cfg)
    real = PruneCallback.__call__

    def prune_later_trials(self, trainer, epoch, row):
        real(self, trainer, epoch, row)
        if self.trial.number > 0 and epoch == 0:
            self.trial.set_user_attr("stopped", "test")
            raise optuna.TrialPruned("forced")

    monkeypatch.setattr(PruneCallback, "__call__", prune_later_trials)
    res = tune(cfg, trials=2, space=space, study_dir=tmp_path / "st", name="p")
    assert list(res.trials["state"]) == ["complete", "pruned"] and res.best_trial == 0
    pruned = res.trials.iloc[1]
    info = json.loads((Path(pruned["run_dir"]) / "trial.json").read_text())
    assert info["state"] == "pruned" and info["reason"] == "forced"
    run = load_run(pruned["run_dir"])
    assert run.checkpoint_path("last").is_file() and len(pd.read_csv(run.path / "history.csv")) == 1
