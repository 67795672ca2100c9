"""Budgeted hyperparameter search with Optuna; every choice is made on validation, the test split is never read.

Each trial trains one run (``<tune_dir>/trials/trial-NNNN/``) on the configured
train/val splits with the test split replaced by a guard that refuses to be
read. The objective is the trainer's monitor (``train.monitor``, validation AUC
by default) at its best epoch; after every epoch the running best is reported to
the pruner (median by default), which stops weak trials. The study lives in
``<tune_dir>/study.db`` (SQLite), so re-running the same command resumes it.

``budget`` is wall clock for this invocation: no trial starts after it is used
up, and a trial still running then is stopped after its current epoch (recorded
as pruned, ``stopped=budget``). ``trials`` is the total number of finished
(complete or pruned) trials the study should hold; whichever limit comes first.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..config import Config, save_config
from ..data.sources import load_data
from ..defaults import resolve_auto
from ..engine.trainer import monitor_mode
from ..errors import ConfigError, MedclsError, RunError, did_you_mean
from ..extras import require
from ..utils import atomic_write_json, atomic_write_text, file_lock, flatten
from ._common import as_config, without_test
from .space import DEFAULT_SPACE, Param, load_space, parse_budget, parse_space, trial_config

__all__ = ["DEFAULT_SPACE", "PruneCallback", "TuneResult", "load_space", "parse_budget", "parse_space", "tune"]

log = logging.getLogger("medcls")

NO_TEST = "test split never read by tune (trials train and select on train/val only)"
# Keys that may differ when a study is resumed (where and how fast it runs, not what it computes).
RUNTIME = ("train.progress", "train.device", "train.threads", "data.num_workers", "data.data_dir", "data.cache",
           "data.cache_dir", "data.cache_memory_gb")


# ------------------------------------------------------------------ pruning
class PruneCallback:
    """Trainer callback: report the running best monitor value to ``trial``; stop pruned or over-budget trials."""

    def __init__(self, trial, monitor: str, deadline: float | None = None, clock=time.monotonic) -> None:
        self.trial, self.monitor, self.deadline, self.clock = trial, monitor, deadline, clock

    def __call__(self, trainer, epoch: int, row: dict[str, Any]) -> None:
        import optuna

        value = trainer.best_value if trainer.best_value is not None else row.get(f"val_{self.monitor}")
        if value is not None and math.isfinite(value):
            self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr("stopped", f"pruned after epoch {epoch + 1}")
            raise optuna.TrialPruned(f"val_{self.monitor}={value} at epoch {epoch + 1} is below the pruner's bar")
        if self.deadline is not None and self.clock() >= self.deadline and epoch + 1 < trainer.cfg.train.epochs:
            self.trial.set_user_attr("stopped", f"budget used up after epoch {epoch + 1}")
            raise optuna.TrialPruned(f"budget used up after epoch {epoch + 1}")


PRUNERS = ("median", "hyperband", "none")


def check_pruner(name: str) -> None:
    if name not in PRUNERS:
        raise ConfigError(f"--pruner must be median, hyperband or none, got {name!r}.{did_you_mean(name, list(PRUNERS))}")


def build_pruner(name: str, epochs: int):
    import optuna

    check_pruner(name)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


# ------------------------------------------------------------------ study bookkeeping
def _space_dict(space: list[Param]) -> dict[str, Any]:
    return {p.key: p.to_dict() for p in space}


def _check_same_study(tune_dir: Path, cfg: Config, space: list[Param]) -> None:
    """A resumed study must keep its base config and search space (else it is another study)."""
    base_p, space_p = tune_dir / "base_config.yaml", tune_dir / "space.yaml"
    if not base_p.is_file():
        return
    old, new = flatten(yaml.safe_load(base_p.read_text()) or {}), flatten(cfg.to_dict())
    diffs = [k for k in sorted(set(old) | set(new)) if k not in RUNTIME and old.get(k) != new.get(k)]
    old_space = yaml.safe_load(space_p.read_text()) if space_p.is_file() else None
    if diffs or old_space != _space_dict(space):
        what = f"config keys {', '.join(diffs[:6])}" if diffs else "search space"
        raise RunError(f"{tune_dir} holds a study started with a different {what}; resume with the same "
                       f"--config/--set/--space, or start a new study with another --name")


def _record_study(tune_dir: Path, cfg: Config, space: list[Param]) -> None:
    """Record the base config and space once the study exists (a run that failed before leaves nothing)."""
    if not (tune_dir / "base_config.yaml").is_file():
        atomic_write_text(tune_dir / "space.yaml", yaml.safe_dump(_space_dict(space), sort_keys=False))
        save_config(cfg, tune_dir / "base_config.yaml")


def trials_frame(study) -> pd.DataFrame:
    rows = []
    for t in study.trials:
        ua = t.user_attrs
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value,
                     "best_epoch": ua.get("best_epoch"), "epochs_run": len(t.intermediate_values),
                     "duration_s": round(t.duration.total_seconds(), 2) if t.duration else None,
                     "stopped": ua.get("stopped", ""), **t.params, "run_dir": ua.get("run_dir", "")})
    return pd.DataFrame(rows)


def plot_trials(study, path: Path, monitor: str) -> None:
    """Objective per trial with the best so far, validation curves (pruned ones grey), parameter importance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib.ticker import MaxNLocator

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    importance: dict[str, float] = {}
    if len(done) >= 3:
        try:
            importance = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError, ZeroDivisionError):
            importance = {}
    fig, axes = plt.subplots(1, 3 if importance else 2, figsize=(15 if importance else 10, 4))
    ax = axes[0]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    xs = [t.number for t in done]
    ys = [t.value for t in done]
    ax.plot(xs, ys, "o", label="complete")
    if ys:
        best = pd.Series(ys).cummax() if maximize else pd.Series(ys).cummin()
        ax.step(xs, best, where="post", label="best so far")
    pr = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
    ax.plot([t.number for t in pr], [max(t.intermediate_values.values()) if maximize else min(t.intermediate_values.values())
                                      for t in pr], "x", color="grey", label="pruned (best reported)")
    ax.set(xlabel="trial", ylabel=f"val {monitor}", title="optimisation history")
    ax.legend(fontsize=8)
    ax = axes[1]
    for t in study.trials:
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            ax.plot([s + 1 for s in steps], [t.intermediate_values[s] for s in steps],
                    color="C0" if t.state == optuna.trial.TrialState.COMPLETE else "grey", alpha=0.7)
    ax.set(xlabel="epoch", ylabel=f"best val {monitor} so far", title="learning curves (grey: stopped)")
    if importance:
        names = list(importance)[::-1]
        axes[2].barh(names, [importance[n] for n in names])
        axes[2].set(title="parameter importance (fANOVA)", xlabel="importance")
    for a in axes[:2]:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class TuneResult:
    """Outcome of :func:`tune`; ``best_config`` trains with ``medcls train --config <path>/best_config.yaml``."""

    path: Path
    study_name: str
    storage: str
    monitor: str
    direction: str
    best_value: float
    best_params: dict[str, Any]
    best_trial: int
    best_run_dir: str
    best_config: Config
    trials: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ the search
def _check_request(cfg: Config, budget, trials, name: str | None, pruner: str) -> tuple[float | None, str]:
    """The budget in seconds and the study name; every bad option fails before any data is read."""
    seconds = parse_budget(budget)
    if trials is not None and (not isinstance(trials, int) or trials < 1):
        raise ConfigError(f"--trials must be a positive integer, got {trials!r}")
    if seconds is None and trials is None:
        raise ConfigError("give a --budget (e.g. 30m) and/or a number of --trials: the search needs a limit")
    name = name or f"{cfg.name}-tune"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"--name must use letters, digits, '_', '.', '-' only, got {name!r}")
    check_pruner(pruner)
    return seconds, name


def _open_study(name: str, storage: str, direction: str, pruner: str, epochs: int, seed: int, trials: int | None):
    """The study (created or resumed; trials left running by a dead process marked failed) and its finished count."""
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction=direction,
                                pruner=build_pruner(pruner, epochs))
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        log.warning("trial %d was left running by an earlier process: marked failed", t.number)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                            optuna.trial.TrialState.PRUNED)))
    startup = max(3, min(10, trials // 3)) if trials else 10
    # reseeded by the history length, so a resumed study does not replay its first random proposals
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials), n_startup_trials=startup)
    return study, finished


def _objective(cfg: Config, params, data, tune_dir: Path, name: str, deadline: float | None):
    """One trial: train the sampled config on the (test-free) data; its value is the best-epoch monitor."""
    import optuna

    from ..api import train

    monitor = cfg.train.monitor

    def objective(trial) -> float:
        values = {p.key: p.suggest(trial) for p in params}
        run_dir = tune_dir / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        tcfg = trial_config(cfg, values, f"{cfg.name}-t{trial.number}")
        log.info("trial %d: %s", trial.number, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                         for k, v in values.items()))
        state, reason = "failed", ""
        try:
            run = train(tcfg, data=data, run_dir=run_dir, callbacks=[PruneCallback(trial, monitor, deadline)])
            m = run.metrics().get("train", {})
            value = m.get("best_value")
            trial.set_user_attr("best_epoch", m.get("best_epoch"))
            state = "complete" if value is not None and math.isfinite(value) else "failed"
            reason = "" if state == "complete" else f"val_{monitor} undefined at every epoch"
            return float("nan") if value is None else float(value)
        except optuna.TrialPruned as e:
            state, reason = "pruned", str(e)
            raise
        except (FloatingPointError, MedclsError, KeyboardInterrupt) as e:
            reason = str(e) or type(e).__name__
            trial.set_user_attr("stopped", reason)
            raise
        finally:
            if run_dir.is_dir():  # the run directory says what happened (a pruned run stays resumable)
                atomic_write_json(run_dir / "trial.json", {"study": name, "number": trial.number, "state": state,
                                                           "reason": reason, "params": values})

    return objective


def _after_trial(tune_dir: Path, monitor: str):
    import optuna

    def after_trial(study, frozen) -> None:
        atomic_write_text(tune_dir / "trials.csv", trials_frame(study).to_csv(index=False))
        last = " (last reported)" if frozen.state == optuna.trial.TrialState.PRUNED else ""
        log.info("trial %d %s: %s", frozen.number, frozen.state.name.lower(),
                 "" if frozen.value is None else f"val_{monitor} {frozen.value:.4f}{last}")

    return after_trial


def tune(config: Config | str | Path | dict | None = None, *, budget: str | float | None = None,
         trials: int | None = None, overrides: list[str] | None = None, space: str | Path | dict | None = None,
         study_dir: str | Path | None = None, name: str | None = None, seed: int | None = None,
         pruner: str = "median") -> TuneResult:
    """Search hyperparameters of ``config`` on validation; see the module doc. Returns the best trial's config."""
    optuna = require("optuna", "medcls tune")

    cfg = as_config(config, list(overrides or []) + ([f"seed={seed}"] if seed is not None else []))
    seconds, name = _check_request(cfg, budget, trials, name, pruner)
    params = load_space(space, cfg)
    monitor = cfg.train.monitor
    direction = "maximize" if monitor_mode(monitor) == "max" else "minimize"
    tune_dir = Path(study_dir or cfg.output_dir) / name
    tune_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(tune_dir / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with file_lock(tune_dir / "tune.lock", str(tune_dir), holder="another medcls tune",
                   hint="wait for it or choose another --name"):
        _check_same_study(tune_dir, cfg, params)
        data = without_test(load_data(cfg.data), NO_TEST)
        epochs = resolve_auto(cfg, data)[0].train.epochs  # what each trial will train (train resolves the same)
        study, finished = _open_study(name, storage, direction, pruner, epochs, cfg.seed, trials)
        _record_study(tune_dir, cfg, params)
        remaining = None if trials is None else trials - finished
        if remaining is None or remaining > 0:
            deadline = time.monotonic() + seconds if seconds else None
            study.optimize(_objective(cfg, params, data, tune_dir, name, deadline), n_trials=remaining,
                           timeout=seconds, catch=(FloatingPointError,), callbacks=[_after_trial(tune_dir, monitor)],
                           gc_after_trial=True)
        else:
            log.info("study %s already holds %d finished trials (--trials %d): nothing to run", name, finished, trials)
    return _finish(study, tune_dir, cfg, storage, monitor, direction)


def _finish(study, tune_dir: Path, cfg: Config, storage: str, monitor: str, direction: str) -> TuneResult:
    import optuna

    frame = trials_frame(study)
    atomic_write_text(tune_dir / "trials.csv", frame.to_csv(index=False))
    plot_trials(study, tune_dir / "trials.png", monitor)
    counts = frame["state"].value_counts().to_dict() if len(frame) else {}
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise RunError(f"no trial of study {study.study_name} completed ({counts or 'none ran'}); give a larger "
                       f"--budget or fewer train.epochs. Trials: {tune_dir / 'trials.csv'}")
    best = study.best_trial
    best_cfg = trial_config(cfg, best.params, f"{cfg.name}-tuned")
    save_config(best_cfg, tune_dir / "best_config.yaml")
    notes = [NO_TEST, f"objective: best-epoch val_{monitor} ({direction})",
             f"next: medcls train --config {tune_dir / 'best_config.yaml'} (evaluates once on test)"]
    atomic_write_json(tune_dir / "tune_summary.json", {
        "study": study.study_name, "storage": storage, "monitor": monitor, "direction": direction,
        "best": {"number": best.number, "value": best.value, "params": best.params,
                 "run_dir": best.user_attrs.get("run_dir")}, "counts": counts, "notes": notes})
    return TuneResult(tune_dir, study.study_name, storage, monitor, direction, float(best.value), dict(best.params),
                      best.number, best.user_attrs.get("run_dir", ""), best_cfg, frame, counts, notes)


def print_summary(result: TuneResult, top: int = 5) -> None:
    from rich.console import Console
    from rich.table import Table

    df = result.trials[result.trials["state"] == "complete"]
    df = df.sort_values("value", ascending=result.direction == "minimize").head(top)
    keys = list(result.best_params)
    counts = ", ".join(f"{v} {k}" for k, v in result.counts.items())
    table = Table(title=f"tune · {result.study_name} · {len(result.trials)} trials ({counts}) · top {len(df)}")
    for c in ("trial", f"val {result.monitor}", "best ep.", *keys):
        table.add_column(c, justify="right")

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    for _, r in df.iterrows():
        table.add_row(str(r["number"]), f"{r['value']:.4f}", fmt(r.get("best_epoch")), *[fmt(r.get(k)) for k in keys],
                      style="bold" if r["number"] == result.best_trial else None)
    console = Console()
    console.print(table)
    console.print(f"best config: {result.path / 'best_config.yaml'}  (study {result.storage})")
    for n in result.notes:
        console.print(f"note: {n}")
