"""utils: file_lock (one holder, released after the block and when the holder dies), check_new_output, flatten."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from medcls.errors import RunError
from medcls.utils import check_new_output, file_lock, flatten

_HOLD = """
import sys, time
from medcls.utils import check_new_output, file_lock, flatten
with file_lock(sys.argv[1], "the thing"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(path, seconds: float) -> subprocess.Popen:
    """A process holding the lock on ``path`` for ``seconds``, started once it holds it."""
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_held_lock_refuses_a_second_holder_with_one_line(tmp_path):
    lock = tmp_path / "x.lock"
    with file_lock(lock, "the study"):
        with pytest.raises(RunError) as e, file_lock(lock, "the study", holder="another tune", hint="wait for it"):
            pass  # a second open of the file in this process is a second holder too
        assert str(e.value) == f"the study is in use by another tune (pid {os.getpid()}); wait for it"
    with file_lock(lock, "the study"):  # released after the with-block
        pass
    assert not lock.exists()


def test_a_lock_held_by_another_process_is_refused_until_it_exits(tmp_path):
    lock = tmp_path / "x.lock"
    p = _holder(lock, 30)
    try:
        busy = rf"the thing is in use by another process \(pid {p.pid}\)$"
        with pytest.raises(RunError, match=busy), file_lock(lock, "the thing"):
            pass
    finally:
        p.kill()
        p.wait()


def test_a_killed_holder_releases_the_lock(tmp_path):
    lock = tmp_path / "x.lock"
    p = _holder(lock, 60)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert lock.exists()  # the file stays behind, but no process holds its lock
    with file_lock(lock, "the thing"):
        assert lock.read_text().strip() == str(os.getpid())


def test_waiting_takes_the_lock_once_the_holder_leaves(tmp_path):
    lock = tmp_path / "x.lock"
    p = _holder(lock, 0.5)
    with file_lock(lock, "the thing", wait=True):
        assert p.wait(timeout=5) == 0  # the holder left the block (and removed the file it had locked)
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(RunError, match=rf"\(pid {os.getpid()}\)"), file_lock(lock, "the thing"):
            pass  # what this process holds is the file now at the path, not the removed one


def test_check_new_output_refuses_what_exists_in_one_line(tmp_path):
    check_new_output(tmp_path / "new", "runs")
    (tmp_path / "empty").mkdir()
    check_new_output(tmp_path / "empty", "bundles", empty_dir_ok=True)
    with pytest.raises(RunError, match=r"empty already exists; choose another -o \(runs are never overwritten\)$"):
        check_new_output(tmp_path / "empty", "runs")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    with pytest.raises(RunError, match=r"full already exists and is not empty; choose another -o \(bundles are"):
        check_new_output(tmp_path / "full", "bundles", empty_dir_ok=True)
    with pytest.raises(RunError, match=r"x already exists; pass --force to overwrite it$"):
        check_new_output(tmp_path / "full" / "x", None, hint="pass --force to overwrite it")


def test_flatten_joins_nested_keys_and_keeps_empty_dicts_as_values():
    d = {"train": {"lr": 0.1, "sched": {"name": "cosine"}}, "data": {"options": {}}, "seed": 0}
    assert flatten(d) == {"train.lr": 0.1, "train.sched.name": "cosine", "data.options": {}, "seed": 0}
    assert list(flatten(d, sep="/")) == ["train/lr", "train/sched/name", "data/options", "seed"]
