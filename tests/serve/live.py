"""`medcls serve` as a real process on 127.0.0.1, for the tests that need real sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 120) -> str:
    """``base`` once its /ready answers 200; the server's output if it exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(base + "/ready", timeout=1).status_code == 200:
                return base
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server did not become ready in {timeout:.0f} s")


@contextmanager
def served(bundle: Path, *flags: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``medcls serve bundle *flags`` on a free port: (base URL, process), once /ready answers."""
    pytest.importorskip("fastapi")  # the 'serve' extra
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medcls", "serve", str(bundle), "--port", str(port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base = wait_ready(f"http://127.0.0.1:{port}", proc)
    try:
        yield base, proc
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # stop by PID
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
