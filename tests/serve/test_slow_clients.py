"""Slow and half-sent requests against a real server: answered 408 and closed within the deadlines,
their sockets released (issue 14: 5,000 half-sent requests held 5,000 file descriptors for 75 s+)."""

from __future__ import annotations

import json
import os
import socket
import time

import httpx
import pytest

from .live import served


@pytest.fixture(scope="module")
def strict(bundle):
    out, _ = bundle
    with served(out, "--timeout-headers", "1", "--timeout-body", "1.5") as (base, proc):
        yield base, proc


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _status_and_error(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def test_headers_that_never_complete_get_408_and_a_closed_socket(strict):
    base, _ = strict
    s = _connect(base)
    t0 = time.monotonic()
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and then nothing
    raw = _read_all(s)  # returns when the server closes
    took = time.monotonic() - t0
    status, err = _status_and_error(raw)
    assert status == 408 and err["code"] == "timeout" and "headers" in err["message"]
    assert 0.8 < took < 4, took


def test_a_trickled_header_does_not_reset_the_deadline(strict):
    base, _ = strict
    s = _connect(base)
    t0 = time.monotonic()
    s.sendall(b"GET /health HTTP/1.1\r\n")
    with pytest.raises(OSError):  # slowloris: one byte every 0.2 s, for ever
        for _ in range(40):
            s.sendall(b"X")
            time.sleep(0.2)
    assert time.monotonic() - t0 < 4


def test_a_body_that_stops_halfway_gets_408_json(strict):
    base, _ = strict
    s = _connect(base)
    t0 = time.monotonic()
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
              b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
              b"filename=\"a.png\"\r\n\r\n\x89PNG")
    status, err = _status_and_error(_read_all(s))
    assert status == 408 and err["code"] == "timeout" and "body" in err["message"]
    assert 1.2 < time.monotonic() - t0 < 5


def test_keep_alive_requests_are_not_cut(strict):
    base, _ = strict
    with httpx.Client(base_url=base) as c:  # one connection, idle less than the keep-alive timeout
        for _ in range(3):
            assert c.get("/health").status_code == 200
            time.sleep(0.6)


def test_half_sent_requests_release_their_file_descriptors(strict):
    base, proc = strict
    fds = f"/proc/{proc.pid}/fd"
    if not os.path.isdir(fds):
        pytest.skip("no /proc here")
    before = len(os.listdir(fds))
    socks = [_connect(base) for _ in range(200)]
    for s in socks:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.5)
    assert len(os.listdir(fds)) >= before + 150  # the server holds them now
    time.sleep(2.5)
    assert len(os.listdir(fds)) <= before + 5
    assert httpx.get(base + "/health", timeout=5).status_code == 200
    for s in socks:
        s.close()
