"""SIGTERM on a busy real server: the requests in flight finish, new ones get 503, the process exits within
its grace period (the contract Kubernetes' preStop + terminationGracePeriodSeconds rely on)."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

from .live import free_port, wait_ready

pytest.importorskip("fastapi")  # the 'serve' extra


def start(bundle, *flags: str) -> tuple[str, subprocess.Popen]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medcls", "serve", str(bundle), "--port", str(port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return wait_ready(f"http://127.0.0.1:{port}", proc), proc


def upload(base: str) -> tuple[bytes, bytes]:
    """A /v1/predict request as raw bytes: (headers, body)."""
    buf = io.BytesIO()
    Image.new("L", (64, 64), 90).save(buf, format="PNG")
    req = httpx.Request("POST", base + "/v1/predict", files={"file": ("a.png", buf.getvalue())})
    body = req.read()
    head = f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: {req.headers['content-type']}\r\n" \
           f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode(), body


def response(s: socket.socket) -> tuple[int, bytes]:
    raw = b""
    while chunk := s.recv(65536):
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_sigterm_drains_a_slow_upload_refuses_new_requests_and_exits_in_time(bundle):
    base, proc = start(bundle[0], "--timeout-graceful-shutdown", "8")
    try:
        head, body = upload(base)
        s = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=20)
        s.sendall(head + body[: len(body) // 2])  # a slow upload, half sent
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        new = httpx.get(base + "/v1/model", timeout=5)
        assert new.status_code == 503 and new.json()["error"]["code"] == "shutting_down"
        assert new.headers["connection"] == "close" and new.headers["retry-after"] == "1"
        assert httpx.get(base + "/ready", timeout=5).status_code == 503  # out of the Service's endpoints
        assert httpx.get(base + "/health", timeout=5).status_code == 200  # but alive: no restart
        assert proc.poll() is None  # still draining the upload
        s.sendall(body[len(body) // 2 :])
        status, answer = response(s)
        assert status == 200 and b"probabilities" in answer  # the request in flight was answered
        proc.wait(timeout=8)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, -signal.SIGTERM), proc.stdout.read().decode()[-2000:]
    assert took < 8, took


def test_sigterm_on_an_idle_server_exits_at_once_and_a_stuck_request_is_cut_at_the_grace_period(bundle):
    base, proc = start(bundle[0], "--timeout-graceful-shutdown", "2")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    assert time.monotonic() - t0 < 3 and proc.returncode in (0, -signal.SIGTERM)

    base, proc = start(bundle[0], "--timeout-graceful-shutdown", "2", "--timeout-body", "60")
    head, body = upload(base)
    s = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=20)
    s.sendall(head + body[:10])  # and never the rest
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - t0
    assert 1.5 < took < 6, took  # waited for it, but not beyond the grace period (drain + shutdown)
    s.close()
