"""A test split that fails the test run if anything reads it (cv and tune must never touch test); a real
PostgreSQL server for the shared tuning studies."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from medcls.data.sources import LoadedData
from medcls.data.table import ImageTable


class Tripwire(ImageTable):
    """Raises on any read of labels, length, images or a subset."""

    def __init__(self) -> None:
        self.ids, self.groups = [], None

    @property
    def labels(self):
        raise AssertionError("the test split's labels were read")

    def __len__(self) -> int:
        raise AssertionError("the test split's length was read")

    def load(self, i):
        raise AssertionError("a test image was read")

    def _take(self, idx):
        raise AssertionError("the test split was subset")


@pytest.fixture(scope="session")
def without_test():
    """``without_test(load_data)``: a loader whose test split is a :class:`Tripwire`."""

    def wrap(real):
        def load(data_cfg):
            d = real(data_cfg)
            return LoadedData(d.spec, d.train, d.val, Tripwire(), d.notes)

        return load

    return wrap


# ------------------------------------------------------------------ a real PostgreSQL on loopback
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run an initdb/pg_ctl command: as user postgres when we are root (PostgreSQL refuses root)."""
    if os.geteuid() == 0:
        cmd = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on a free loopback port (``postgresql+psycopg://postgres@127.0.0.1:PORT/
    postgres``), stopped and removed at the end. Skips without PostgreSQL, fails then under MEDCLS_REQUIRE_ALL=1."""
    pytest.importorskip("psycopg")  # the 'tune' extra
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        why = "PostgreSQL (initdb, pg_ctl) is not on PATH"
        if os.environ.get("MEDCLS_REQUIRE_ALL") == "1":
            pytest.fail(f"{why}, but MEDCLS_REQUIRE_ALL=1")
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="medcls-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data = root / "data"
    r = _as_server_user([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"])
    assert r.returncode == 0, r.stderr[-2000:]
    for _ in range(3):  # another process may take the free port before the server does
        port = _free_port()
        r = _as_server_user([pg_ctl, "-D", str(data), "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                             "-l", str(root / "log"), "-w", "start"])
        if r.returncode == 0:
            break
    assert r.returncode == 0, r.stdout[-1000:] + (root / "log").read_text()[-2000:]
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        _as_server_user([pg_ctl, "-D", str(data), "-m", "fast", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_url) -> str:
    """A new, empty database on the test server for one test: its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"
