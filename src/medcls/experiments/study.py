"""Where a tuning study lives and how workers share it: storages, worker identity, the study-wide budget, status.

A study is local (the default ``<study_dir>/<name>/study.db``, or any ``sqlite:///`` URL: one worker at a time,
held by a file lock) or shared (a PostgreSQL/MySQL URL, or ``journal:FILE``): any number of workers run the
same command and join it. On a database, each running trial writes a heartbeat; a worker that finds a trial
without one for ``grace`` seconds marks it failed and Optuna's ``RetryFailedTrialCallback`` queues it once
more (same parameters) for a live worker. Optuna 4's journal storage has no heartbeat: there a worker only
reaps trials of dead processes on its own host (a trial of a worker killed on another host stays RUNNING).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunError, did_you_mean
from ..utils import file_lock

log = logging.getLogger("medcls")

SHARE_HINT = "use --storage postgresql+psycopg://USER@HOST:PORT/DB (or journal:FILE on one host or NFS)"
SQLITE_SHARED = ("SQLite cannot be shared by parallel workers (Optuna's FAQ); use --storage "
                 "postgresql+psycopg://USER@HOST:PORT/DB or journal:FILE")
MAX_RETRY = 1  # a trial of a dead worker is run once more, then left failed
FINISHED = ("COMPLETE", "PRUNED")


@dataclass
class Store:
    """An opened storage: the Optuna object, a printable name (no password), and how workers share it."""

    storage: Any
    shown: str
    kind: str  # "local" (one worker, file lock), "rdb" (heartbeat) or "journal"
    lock: Path | None = None
    heartbeat: int | None = None

    @property
    def shared(self) -> bool:
        return self.kind != "local"

    def hold(self, tune_dir: Path) -> AbstractContextManager[None]:
        """The single-worker lock of a local study (nothing for a shared one)."""
        if self.lock is None:
            return nullcontext()
        default = self.lock.name == "tune.lock"
        return file_lock(self.lock, str(tune_dir if default else self.lock.with_suffix("")),
                         holder="another medcls tune",
                         hint=f"wait for it, choose another --name, or to run several workers {SHARE_HINT}"
                         if default else SQLITE_SHARED)


@contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's heartbeat, retry callback and constant liar are marked experimental: no warning for each."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_store(spec: str | None, tune_dir: Path, heartbeat: int = 60) -> Store:
    """Open ``--storage`` (None: the local SQLite file of the study folder); one ConfigError line if it cannot."""
    if not isinstance(heartbeat, int) or heartbeat < 1:
        raise ConfigError(f"--heartbeat must be a positive number of seconds, got {heartbeat!r}")
    if spec is None:
        tune_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(tune_dir / 'study.db').resolve()}"
        return Store(_rdb(url, url, None), url, "local", lock=tune_dir / "tune.lock")
    spec = spec.strip()
    if spec.startswith("journal:"):
        return _journal(spec)
    if "://" not in spec:
        raise ConfigError(f"--storage {spec!r} is neither a database URL nor journal:FILE; {SHARE_HINT}")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(spec)
    except ArgumentError as e:
        raise ConfigError(f"--storage {spec!r} is not a database URL ({e}); {SHARE_HINT}") from None
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        db = Path(url.database or "")
        if not url.database or url.database == ":memory:":
            raise ConfigError(f"--storage {shown}: an in-memory SQLite study cannot be resumed; give sqlite:///FILE")
        return Store(_rdb(spec, shown, None), shown, "local", lock=db.with_name(db.name + ".lock"))
    return Store(_rdb(spec, shown, heartbeat), shown, "rdb", heartbeat=heartbeat)


def _journal(spec: str) -> Store:
    import optuna

    path = Path(spec[len("journal:"):]).expanduser()
    if not spec[len("journal:"):]:
        raise ConfigError("--storage journal: needs a file, e.g. journal:/shared/studies/tune.log")
    if not path.parent.is_dir():
        raise ConfigError(f"--storage {spec}: folder {path.parent} does not exist")
    backend = optuna.storages.journal.JournalFileBackend(str(path.resolve()))
    return Store(optuna.storages.JournalStorage(backend), f"journal:{path.resolve()}", "journal")


def _rdb(url: str, shown: str, heartbeat: int | None):
    """``RDBStorage`` (heartbeat and one retry of a dead worker's trial when shared); one line if it cannot open."""
    import optuna
    import sqlalchemy.exc as sa

    kwargs: dict[str, Any] = {}
    if heartbeat is not None:
        with _quiet():
            retry = optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRY)
        kwargs = {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat, "failed_trial_callback": retry}
    engine = {"connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else None
    for attempt in range(4):
        try:
            with _quiet():
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
        except sa.NoSuchModuleError:
            scheme = url.split("://")[0]
            raise ConfigError(f"--storage {shown}: unknown database scheme {scheme!r}; {SHARE_HINT}") from None
        except ImportError as e:
            what = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "its driver"
            hint = ("pip install 'medcls[tune]' (psycopg) for postgresql+psycopg://" if url.startswith("postgresql")
                    else "install it, or use a scheme whose driver is installed (postgresql+psycopg:// with "
                    "pip install 'medcls[tune]')")
            raise ConfigError(f"--storage {shown}: the database driver ({what}) is not installed; {hint}") from None
        except sa.SQLAlchemyError as e:
            # workers started together create the tables at once: one of them may lose that race, and retries
            if isinstance(e, (sa.IntegrityError, sa.ProgrammingError)) and attempt < 3:
                time.sleep(0.5 + attempt)
                continue
            first = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"--storage {shown}: cannot open the study database ({first})") from None
    raise AssertionError("unreachable")


# ------------------------------------------------------------------ workers
def worker_identity() -> dict[str, Any]:
    """``host``, ``pid`` and ``worker`` ("host:pid") of this process, recorded on every trial it runs."""
    host, pid = socket.gethostname(), os.getpid()
    return {"host": host, "pid": pid, "worker": f"{host}:{pid}"}


def sampler_seed(seed: int, store: Store, n_trials: int, worker: str, now_ns: int | None = None) -> int:
    """A local study's seed is ``seed + trials so far`` (reproducible); a shared one's mixes in the worker, so
    workers started together propose different configurations."""
    if not store.shared:
        return seed + n_trials
    salt = f"{seed}:{worker}:{time.time_ns() if now_ns is None else now_ns}"
    return int(hashlib.sha256(salt.encode()).hexdigest()[:8], 16)


def make_sampler(seed: int, n_startup: int):
    import optuna

    with _quiet():
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, constant_liar=True)


# ------------------------------------------------------------------ the same study
def check_same_study(study, base: dict[str, Any], space: dict[str, Any], *, record: bool) -> None:
    """The study's recorded base config (flat, runtime keys left out) and space must be these (else: one line).

    With ``record`` they are written first when the study has none; re-read afterwards, so of two workers that
    created it at once with different configs, the one that lost the race is refused.
    """
    attrs = study.user_attrs
    if "base_config" not in attrs:
        if not record:
            return
        study.set_user_attr("base_config", base)
        study.set_user_attr("space", space)
        attrs = study.user_attrs
    old = attrs.get("base_config") or {}
    diffs = [k for k in sorted(set(old) | set(base)) if old.get(k) != base.get(k)]
    if diffs or attrs.get("space") != space:
        what = f"config keys {', '.join(diffs[:6])}" if diffs else "search space"
        raise RunError(f"study {study.study_name} was started with a different {what}; join it with the same "
                       f"--config/--set/--space, or start a new study with another --name")


def study_deadline(study, seconds: float | None, *, shared: bool, now: float | None = None) -> float | None:
    """The study-wide end of the time budget (UTC epoch): on a shared study the one recorded while it is in the
    future, else (and always on a local one, which has one worker) a new window of ``seconds`` from now, recorded
    for the workers that join."""
    if seconds is None:
        return None
    now = time.time() if now is None else now
    recorded = study.user_attrs.get("deadline")
    if shared and isinstance(recorded, (int, float)) and recorded > now:
        return float(recorded)
    study.set_user_attr("deadline", now + seconds)
    return now + seconds


# ------------------------------------------------------------------ the study-wide budget
def counts(study) -> tuple[int, int]:
    """(finished = complete + pruned, running) trials of the study."""
    import optuna

    S = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.RUNNING))
    running = sum(t.state == S.RUNNING for t in trials)
    return len(trials) - running, running


def is_surplus(study, number: int, target: int | None) -> bool:
    """Whether trial ``number`` (running) would exceed the study's ``target``: the finished trials and the running
    ones started before it (by start time, then number) already fill it. Workers that raced past the budget
    check agree on which of their trials go ahead."""
    if target is None:
        return False
    import optuna

    S = optuna.trial.TrialState
    live = study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.RUNNING))
    mine = next((t for t in live if t.number == number), None)
    if mine is None:
        return True

    def key(t):
        return (t.datetime_start.timestamp() if t.datetime_start else 0.0, t.number)

    ahead = sum(t.number != number and (t.state != S.RUNNING or key(t) < key(mine)) for t in live)
    return ahead >= target


def reap(study, store: Store) -> None:
    """Fail the trials of dead workers so they are retried: by heartbeat on a database; on a journal, running
    trials of processes of this host that no longer exist."""
    import optuna

    with _quiet():
        if store.kind == "rdb":
            optuna.storages.fail_stale_trials(study)
        elif store.kind == "journal":
            _reap_local_dead(study, optuna)


def _reap_local_dead(study, optuna) -> None:
    me = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != me or not isinstance(pid, int) or _alive(pid):
            continue
        try:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker reaped it first
            continue
        log.warning("trial %d: its worker %s is gone; marked failed", t.number, t.user_attrs.get("worker"))
        with _quiet():
            optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRY)(study, study.trials[t.number])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_budget(study, run_one: Callable[[], None], *, target: int | None, deadline: float | None, poll: float,
               reap_dead: Callable[[], None], clock=time.time, sleep=time.sleep) -> str:
    """Run trials (``run_one``: one trial) until the study holds ``target`` finished ones or ``deadline`` passes.

    A new trial is started only while finished + running < target; when the running trials of peers would fill
    it, the worker waits (reaping dead workers' trials, whose retries it then runs) instead of leaving, so the
    budget is met. Returns why it stopped: "trials" or "budget".
    """
    while True:
        if deadline is not None and clock() >= deadline:
            return "budget"
        finished, running = counts(study)
        if target is not None and finished >= target:
            return "trials"
        if target is not None and finished + running >= target:
            sleep(poll)
            reap_dead()
            continue
        run_one()


# ------------------------------------------------------------------ status
@dataclass
class StudyStatus:
    """What ``medcls tune --status`` prints: trials by state and by worker, and the best so far."""

    name: str
    storage: str
    direction: str
    states: dict[str, int]
    workers: dict[str, dict[str, int]]
    best: dict[str, Any] | None
    deadline: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


def study_names(store: Store) -> list[str]:
    import optuna

    return sorted(optuna.get_all_study_names(store.storage))


def load_existing(store: Store, name: str):
    """The study ``name`` of ``store``; one line listing the studies there when it does not exist."""
    import optuna

    names = study_names(store)
    if name not in names:
        there = ", ".join(names) if names else "none"
        raise RunError(f"no study {name!r} in {store.shown}.{did_you_mean(name, names)} Studies there: {there}")
    return optuna.load_study(study_name=name, storage=store.storage)


def study_status(store: Store, name: str) -> StudyStatus:
    """Counts by state and by worker (host:pid) and the best trial of study ``name``; reads, never writes."""
    study = load_existing(store, name)
    states: dict[str, int] = {}
    workers: dict[str, dict[str, int]] = {}
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        states[state] = states.get(state, 0) + 1
        w = workers.setdefault(str(t.user_attrs.get("worker", "?")), {})
        w[state] = w.get(state, 0) + 1
    best = None
    if states.get("complete"):
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": dict(b.params),
                "run_dir": b.user_attrs.get("run_dir", ""), "worker": b.user_attrs.get("worker", "?")}
    return StudyStatus(name, store.shown, study.direction.name.lower(), states, workers, best,
                       study.user_attrs.get("deadline"))


def status(storage: str | None = None, name: str | None = None, study_dir: str | Path | None = None) -> StudyStatus:
    """:func:`study_status` of ``--storage`` (default: ``<study_dir>/<name>/study.db``); creates nothing."""
    if storage is None:
        if name is None:
            raise ConfigError("--status needs the study's --name (and --study-dir, or --storage URL)")
        parent = Path(study_dir or "runs")
        if not (parent / name / "study.db").is_file():
            names = sorted(p.parent.name for p in parent.glob("*/study.db"))
            raise RunError(f"no study {name!r} in {parent}.{did_you_mean(name, names)} Studies there: "
                           f"{', '.join(names) or 'none'}")
        store = open_store(None, parent / name)
    else:
        _check_exists(storage)
        store = open_store(storage, Path(study_dir or "."))
    if name is None:
        names = study_names(store)
        if len(names) != 1:
            raise ConfigError(f"--status needs --name: {store.shown} holds {', '.join(names) or 'no study'}")
        name = names[0]
    return study_status(store, name)


def _check_exists(spec: str) -> None:
    """A file store that is not there is an error for ``--status`` (opening it would create it)."""
    path = None
    if spec.startswith("journal:"):
        path = Path(spec[len("journal:"):]).expanduser()
    elif spec.startswith("sqlite:///"):
        path = Path(spec[len("sqlite:///"):])
    if path is not None and not path.is_file():
        raise RunError(f"--storage {spec}: {path} does not exist (no study there yet)")
