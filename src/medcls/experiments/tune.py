"""Budgeted hyperparameter search with Optuna; every choice is made on validation, the test split is never read.

Each trial trains one run (``<study_dir>/<name>/trials/trial-NNNN/``) on the configured train/val splits with
the test split replaced by a guard that refuses to be read. The objective is the trainer's monitor
(``train.monitor``, validation AUC by default) at its best epoch; after every epoch the running best is
reported to the pruner (median by default), which stops weak trials. Every trial records where it ran (user
attrs ``host``, ``pid``, ``worker``, ``run_dir``, ``sampler_seed``); with MLflow tracking each trial is a run
tagged ``medcls.study``, ``medcls.trial`` and ``medcls.worker``.

The study lives in ``<study_dir>/<name>/study.db`` (SQLite, one worker at a time), or in ``storage``: a
database URL (``postgresql+psycopg://user@host:port/db``) or ``journal:FILE`` that any number of workers
join by running the same command (see :mod:`medcls.experiments.study`). Re-running the command resumes it.

``trials`` is the number of finished (complete or pruned) trials the whole study should hold: a worker starts
a trial only while finished + running trials fall short of it, waits while its peers' running trials would
fill it (their retries, when a peer dies, are its to run), and a trial started by a race past it is failed
before it trains (``stopped="surplus: ..."``), so the study ends with exactly that many. ``budget`` is wall
clock for the whole study: the first worker records its end (UTC epoch) in the study, workers joining before
then share it, and an invocation after it opens a new window (a local study, one worker, opens one each
time). No trial starts after it; a trial still running then is stopped after its current epoch (pruned,
``stopped=budget``). Whichever limit comes first.
"""

from __future__ import annotations

import json
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
from ..utils import atomic_write_json, atomic_write_text, flatten, to_json
from ._common import as_config, without_test
from .space import DEFAULT_SPACE, Param, load_space, parse_budget, parse_space, trial_config
from .study import (
    Store,
    check_same_study,
    is_surplus,
    make_sampler,
    open_store,
    reap,
    run_budget,
    sampler_seed,
    study_deadline,
    worker_identity,
)

__all__ = ["DEFAULT_SPACE", "PruneCallback", "TuneResult", "load_space", "parse_budget", "parse_space", "tune"]

log = logging.getLogger("medcls")

NO_TEST = "test split never read by tune (trials train and select on train/val only)"
SURPLUS = "surplus: study budget reached"
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


def _study_key(cfg: Config) -> dict[str, Any]:
    """The base config as the study records it: flat, JSON values, without the keys that may differ per worker."""
    return json.loads(to_json({k: v for k, v in flatten(cfg.to_dict()).items() if k not in RUNTIME}))


def _record_study(tune_dir: Path, cfg: Config, space: list[Param]) -> None:
    """Write the base config and space beside the study once it exists, for people (the study holds the check)."""
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


def _open_study(store: Store, name: str, direction: str):
    import optuna

    return optuna.create_study(study_name=name, storage=store.storage, load_if_exists=True, direction=direction)


def _prepare_study(study, store: Store, pruner: str, epochs: int, seed: int, trials: int | None, worker: str) -> int:
    """Set the pruner and this worker's sampler; returns the sampler's seed. A local study (one worker) fails
    the trials an earlier process left running; a shared one leaves peers' trials to the heartbeat."""
    import optuna

    if not store.shared:
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            log.warning("trial %d was left running by an earlier process: marked failed", t.number)
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    study.pruner = build_pruner(pruner, epochs)
    startup = max(3, min(10, trials // 3)) if trials else 10
    # local: reseeded by the history length, so a resumed study does not replay its first random proposals
    s = sampler_seed(seed, store, len(study.trials), worker)
    study.sampler = make_sampler(s, startup)
    log.info("worker %s joins study %s in %s (sampler seed %d)", worker, study.study_name, store.shown, s)
    return s


@dataclass
class _Trials:
    """What every trial of this worker shares."""

    cfg: Config
    params: list[Param]
    data: Any
    tune_dir: Path
    name: str
    deadline: float | None
    target: int | None
    attrs: dict[str, Any]


def _objective(t: _Trials):
    """One trial: train the sampled config on the (test-free) data; its value is the best-epoch monitor."""
    import optuna

    from ..api import train

    monitor = t.cfg.train.monitor

    def objective(trial) -> float:
        if is_surplus(trial.study, trial.number, t.target):  # a peer's trial took the last place first
            trial.set_user_attr("stopped", SURPLUS)
            log.info("trial %d: %s, not run", trial.number, SURPLUS)
            return float("nan")
        values = {p.key: p.suggest(trial) for p in t.params}
        run_dir = t.tune_dir / "trials" / f"trial-{trial.number:04d}"
        for k, v in {**t.attrs, "run_dir": str(run_dir), "stopped": ""}.items():  # a retry inherits the dead one's
            trial.set_user_attr(k, v)
        tcfg = trial_config(t.cfg, values, f"{t.cfg.name}-t{trial.number}")
        tcfg.tracking.tags = {**tcfg.tracking.tags, "medcls.study": t.name, "medcls.trial": str(trial.number),
                              "medcls.worker": t.attrs["worker"]}
        log.info("trial %d: %s", trial.number, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                         for k, v in values.items()))
        state, reason = "failed", ""
        try:
            run = train(tcfg, data=t.data, run_dir=run_dir,
                        callbacks=[PruneCallback(trial, monitor, t.deadline, clock=time.time)])
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
                atomic_write_json(run_dir / "trial.json", {"study": t.name, "number": trial.number, "state": state,
                                                           "reason": reason, "params": values,
                                                           "worker": t.attrs["worker"]})

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
         pruner: str = "median", storage: str | None = None, heartbeat: int = 60) -> TuneResult:
    """Search hyperparameters of ``config`` on validation; see the module doc. Returns the best trial's config."""
    optuna = require("optuna", "medcls tune")

    cfg = as_config(config, list(overrides or []) + ([f"seed={seed}"] if seed is not None else []))
    seconds, name = _check_request(cfg, budget, trials, name, pruner)
    params = load_space(space, cfg)
    monitor = cfg.train.monitor
    direction = "maximize" if monitor_mode(monitor) == "max" else "minimize"
    tune_dir = (Path(study_dir or cfg.output_dir) / name).absolute()
    store = open_store(storage, tune_dir, heartbeat)  # a bad URL or an unreachable server: before any data
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    key, space_d = _study_key(cfg), _space_dict(params)
    with store.hold(tune_dir):
        tune_dir.mkdir(parents=True, exist_ok=True)
        study = _open_study(store, name, direction)
        check_same_study(study, key, space_d, record=False)
        data = without_test(load_data(cfg.data), NO_TEST)
        epochs = resolve_auto(cfg, data)[0].train.epochs  # what each trial will train (train resolves the same)
        check_same_study(study, key, space_d, record=True)
        _record_study(tune_dir, cfg, params)
        who = worker_identity()
        s = _prepare_study(study, store, pruner, epochs, cfg.seed, trials, who["worker"])
        deadline = study_deadline(study, seconds, shared=store.shared)
        objective = _objective(_Trials(cfg, params, data, tune_dir, name, deadline, trials,
                                       {**who, "sampler_seed": s}))

        def run_one() -> None:
            study.optimize(objective, n_trials=1, catch=(FloatingPointError,), gc_after_trial=True,
                           callbacks=[_after_trial(tune_dir, monitor)])

        why = run_budget(study, run_one, target=trials, deadline=deadline, poll=min(heartbeat, 10),
                         reap_dead=lambda: reap(study, store))
        log.info("worker %s stops: %s", who["worker"], "the study holds its --trials" if why == "trials"
                 else "the --budget is used up")
    return _finish(study, tune_dir, cfg, store.shown, monitor, direction)


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
