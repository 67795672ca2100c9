"""``medcls tune --storage``: several workers (real processes) share one study on a real PostgreSQL or a journal
file; the study-wide --trials is met exactly, dead workers' trials are retried, live peers' trials never failed."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")  # the 'tune' extra

from medcls.cli.main import main
from medcls.data.sources import load_data
from medcls.experiments import tune
from medcls.utils import file_lock

tune_mod = importlib.import_module("medcls.experiments.tune")
SPACE = {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
         "train.label_smoothing": {"type": "categorical", "choices": [0.0, 0.1]}}
S = optuna.trial.TrialState
FINISHED = (S.COMPLETE, S.PRUNED)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


@pytest.fixture
def files(tmp_path, make_cfg):
    """A 1-epoch config on 16 images (a trial takes ~2 s), the space, and the study folder."""
    cfg = make_cfg(tmp_path / "runs", name="sh", limit=16, train={"epochs": 1, "warmup_epochs": 0.5})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return tmp_path


def worker(files: Path, storage: str, *flags: str, name: str = "s") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "medcls", "tune", "--config", str(files / "cfg.yaml"), "--space",
           str(files / "space.yaml"), "--study-dir", str(files / "studies"), "--name", name, "--storage", storage,
           "--pruner", "none", *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> None:
    for p in procs:
        out = p.communicate(timeout=timeout)[0]
        assert p.returncode == 0, out[-3000:]


def trials_of(storage, name: str = "s") -> list:
    if name not in optuna.get_all_study_names(storage):
        return []
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def wait_running(storage, proc: subprocess.Popen, timeout: float = 120):
    """The trial ``proc`` is running, once the study shows it (with its worker's attrs)."""
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        mine = [t for t in trials_of(storage) if t.state == S.RUNNING and t.user_attrs.get("pid") == proc.pid]
        if mine:
            return mine[0]
        time.sleep(0.3)
    raise AssertionError("no running trial of the worker in time")


def test_three_workers_meet_the_study_budget_exactly_and_never_fail_a_peer(files, postgres_db, capsys):
    """A starts; B and C join while A's first trial runs: 5 finished trials in all, A's first one not failed."""
    storage = optuna.storages.RDBStorage(postgres_db)
    a = worker(files, postgres_db, "--trials", "5")
    first = wait_running(storage, a)
    others = [worker(files, postgres_db, "--trials", "5") for _ in range(2)]
    finish([a, *others])
    trials = trials_of(storage)
    by_number = {t.number: t for t in trials}
    assert by_number[first.number].state in FINISHED  # the late joiners left A's running trial alone
    assert sum(t.state in FINISHED for t in trials) == 5
    assert not [t for t in trials if t.state in (S.RUNNING, S.WAITING)]
    fails = [t for t in trials if t.state == S.FAIL]
    assert all(t.user_attrs.get("stopped", "").startswith("surplus") for t in fails)  # races only, never trained
    done = [t for t in trials if t.state in FINISHED]
    assert len({t.user_attrs["worker"] for t in done}) >= 2
    assert len({tuple(sorted(t.params.items())) for t in done}) == len(done)  # per-worker seeds: no twin proposals
    assert len({t.user_attrs["sampler_seed"] for t in done}) == len({t.user_attrs["worker"] for t in done})
    for t in done:
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir.is_absolute() and run_dir == files / "studies" / "s" / "trials" / f"trial-{t.number:04d}"
        assert (run_dir / "trial.json").is_file()
        assert t.user_attrs["worker"] == f"{t.user_attrs['host']}:{t.user_attrs['pid']}"

    assert main(["tune", "--status", "--storage", postgres_db, "--name", "s"]) == 0
    out = capsys.readouterr().out
    assert "study s in postgresql+psycopg://postgres@127.0.0.1" in out and "5 complete" in out
    assert "trials by worker" in out and f":{a.pid}" in out and "best: trial" in out
    assert main(["tune", "--status", "--storage", postgres_db, "--name", "z"]) == 2
    err = capsys.readouterr().err
    assert "error: no study 'z' in postgresql+psycopg://" in err and "Studies there: s" in err


def test_a_killed_workers_trial_is_retried_by_a_live_one(files, postgres_db):
    storage = optuna.storages.RDBStorage(postgres_db)
    a = worker(files, postgres_db, "--trials", "2", "--heartbeat", "1")
    killed = wait_running(storage, a)
    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=30)
    a.stdout.close()
    b = worker(files, postgres_db, "--trials", "2", "--heartbeat", "1")
    finish([b])
    trials = {t.number: t for t in trials_of(storage)}
    assert trials[killed.number].state == S.FAIL
    assert not [t for t in trials.values() if t.state == S.RUNNING]
    assert sum(t.state in FINISHED for t in trials.values()) == 2
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state in FINISHED and retry.params == killed.params
    assert retry.user_attrs["pid"] == b.pid and retry.user_attrs["run_dir"] != killed.user_attrs["run_dir"]


def test_journal_storage_shares_a_study_between_two_workers(files, capsys):
    journal = f"journal:{files / 'study.log'}"
    finish([worker(files, journal, "--trials", "2") for _ in range(2)])
    trials = trials_of(optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(files / "study.log"))))
    assert sum(t.state in FINISHED for t in trials) == 2
    assert not [t for t in trials if t.state == S.RUNNING]
    assert main(["tune", "--status", "--storage", journal]) == 0  # the only study there: no --name needed
    assert "study s in journal:" in capsys.readouterr().out


def test_a_shared_study_never_reads_test_and_tags_each_trial_run(files, make_cfg, postgres_db, monkeypatch,
                                                                  without_test):
    """In process, so the test split is a tripwire; with MLflow tracking every trial is a tagged run."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setattr(tune_mod, "load_data", without_test(load_data))
    cfg = yaml.safe_load((files / "cfg.yaml").read_text())
    cfg["tracking"] = {"backend": "mlflow", "experiment": "sh-tune"}
    res = tune(cfg, trials=2, space=files / "space.yaml", study_dir=files / "studies", name="m", storage=postgres_db,
               heartbeat=5)
    assert len(res.trials) == 2 and res.storage.startswith("postgresql+psycopg://")
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{files / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sh-tune").experiment_id])
    tags = sorted((r.data.tags["medcls.study"], r.data.tags["medcls.trial"], r.data.tags["medcls.worker"])
                  for r in runs)
    assert [t[:2] for t in tags] == [("m", "0"), ("m", "1")] and tags[0][2] == f"{socket.gethostname()}:{os.getpid()}"
    with pytest.raises(Exception, match="started with a different config keys train.epochs"):
        tune(cfg, trials=3, space=files / "space.yaml", study_dir=files / "studies", name="m", storage=postgres_db,
             overrides=["train.epochs=2"])


def test_sqlite_refuses_a_second_worker_and_bad_storages_are_one_line(files, capsys, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("data read before the storage was checked")

    monkeypatch.setattr(tune_mod, "load_data", no_data)
    base = ["tune", "--config", str(files / "cfg.yaml"), "--trials", "2", "--name", "q"]
    db = files / "x.db"
    with file_lock(files / "x.db.lock", "held by the test"):
        assert main([*base, "--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.db is in use by another medcls tune" in err
    assert "SQLite cannot be shared by parallel workers (Optuna's FAQ)" in err and "journal:FILE" in err
    cases = {"postgres://u@127.0.0.1/db": "unknown database scheme 'postgres'",
             "mysql://u@127.0.0.1/db": "database driver",
             "postgresql+psycopg://u:secret@127.0.0.1:1/db": "cannot open the study database",
             "study.db": "neither a database URL nor journal:FILE",
             f"journal:{files / 'nope' / 'x.log'}": "does not exist"}
    for url, said in cases.items():
        assert main([*base, "--storage", url]) == 2, url
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and said in err, err
        assert "secret" not in err
    assert not (files / "runs").exists()


# ------------------------------------------------------------------ the budget logic, without training
def _journal_study(tmp_path, storage=None):
    storage = storage or optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "j.log")))
    return optuna.create_study(study_name="u", storage=storage, direction="maximize")


def test_surplus_trials_are_the_ones_started_after_the_budget_was_filled(tmp_path):
    from medcls.experiments.study import is_surplus

    study = _journal_study(tmp_path)
    done = study.ask()
    study.tell(done, 0.5)
    first, second = study.ask(), study.ask()  # two workers raced past the check for the last place of 2
    assert not is_surplus(study, first.number, 2) and is_surplus(study, second.number, 2)
    assert not is_surplus(study, second.number, 3) and not is_surplus(study, second.number, None)


def test_run_budget_waits_for_peers_and_reaps_instead_of_leaving(tmp_path):
    from medcls.experiments.study import run_budget

    study = _journal_study(tmp_path)
    peer = study.ask()  # a peer's running trial would fill a budget of 1
    waits: list[int] = []

    def reap_dead():  # the peer finishes while this worker waits
        waits.append(1)
        if len(waits) == 2:
            study.tell(peer, 0.7)

    ran: list[int] = []
    assert run_budget(study, lambda: ran.append(1), target=1, deadline=None, poll=0, reap_dead=reap_dead,
                      sleep=lambda s: None) == "trials"
    assert len(waits) == 2 and not ran
    assert run_budget(study, lambda: ran.append(1), target=5, deadline=0.0, poll=0, reap_dead=reap_dead) == "budget"


def test_journal_reaps_trials_of_dead_processes_of_this_host_only(tmp_path):
    from medcls.experiments.study import Store, reap

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    study = _journal_study(tmp_path, storage)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead, alive, remote = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), study.ask(), study.ask()
    for t, host, pid in ((dead, socket.gethostname(), gone.pid), (alive, socket.gethostname(), os.getpid()),
                         (remote, "elsewhere", gone.pid)):
        t.set_user_attr("host", host)
        t.set_user_attr("pid", pid)
    reap(study, Store(storage, "journal:x", "journal"))
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[dead.number] == S.FAIL and states[alive.number] == states[remote.number] == S.RUNNING
    (retry,) = [t for t in study.get_trials(deepcopy=False) if t.state == S.WAITING]
    assert retry.params == study.trials[dead.number].params and retry.system_attrs["failed_trial"] == dead.number


def test_the_time_budget_is_shared_while_it_lasts(tmp_path):
    from medcls.experiments.study import study_deadline

    study = _journal_study(tmp_path)
    assert study_deadline(study, None, shared=True) is None
    first = study_deadline(study, 3600, shared=True, now=1000.0)
    assert first == 4600.0 and study.user_attrs["deadline"] == 4600.0
    assert study_deadline(study, 60, shared=True, now=2000.0) == 4600.0  # a worker joining shares it
    assert study_deadline(study, 60, shared=True, now=5000.0) == 5060.0  # after it: a new window
    assert study_deadline(study, 60, shared=False, now=5001.0) == 5061.0  # a local study: each invocation its own
