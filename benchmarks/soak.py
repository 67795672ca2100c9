"""Soak test of ``medcls serve`` under hostile traffic, on 127.0.0.1 only.

The server is started as a subprocess (``python -m medcls serve BUNDLE --api-key-env ...``). Two phases
with ``--clients`` closed-loop clients sending valid requests: ``--clean-seconds`` of those alone, then
``--seconds`` in which an attacker also opens hostile requests (Poisson arrivals) at the rate that makes
them ``--hostile`` (default 0.2) of all requests at the clean throughput. Valid requests are real
PneumoniaMNIST test images enlarged to 512x512 PNGs (an upload's usual size, not the model's 28 px).
Hostile requests, drawn uniformly:

- ``png_bomb``: a 1-bit PNG whose header declares 20000x20000 pixels (a few KB)
- ``dicom_bomb``: a deflated DICOM declaring 7072x7072 pixels (about 100 KB on the wire)
- ``truncated_png``: a PNG header declaring 300,000 rows, holding 4
- ``large_valid``: a valid 3000x3000 PNG (9 MP, within the limits: answered, but expensive)
- ``oversized``: a body declaring 30 MB (over the 20 MB limit), sent with the key
- ``bad_key``: a 50 MB body declared without the API key
- ``slow_headers``: headers that never complete (the header deadline answers)
- ``slow_body``: a body that stops halfway (the body deadline answers)

Reported per phase: req/s and p50/p99 of the valid requests, responses by kind and status, 5xx and
transport errors, and the server's RSS (start, peak, end, from /proc). Targets (issue 14): no 5xx,
RSS growth < 100 MB over the hostile phase, valid p99 under hostile load within 3x of the clean p99.

    python benchmarks/soak.py --bundle bundles/pneumonia --seconds 300 --json soak.json
    python benchmarks/soak.py --bundle bundles/pneumonia --seconds 20 --clean-seconds 10   # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import random
import struct
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import cpu_name
from PIL import Image
from serve_load import HOST, Server

KEY = "soak-test-key"
KINDS = ("png_bomb", "dicom_bomb", "truncated_png", "large_valid", "oversized", "bad_key", "slow_headers",
         "slow_body")


# ------------------------------------------------------------------ payloads
def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _png_chunks(w: int, h: int, depth: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _dicom_bomb(side: int = 7072) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.set_pixel_data(np.zeros((side, side), np.uint16), photometric_interpretation="MONOCHROME2", bits_stored=12)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def valid_images(npz: Path, n: int = 64, size: int = 512) -> list[bytes]:
    with np.load(npz) as d:
        imgs = d["test_images"]
    idx = np.linspace(0, len(imgs) - 1, n).astype(int)
    return [_png(np.asarray(Image.fromarray(imgs[i]).resize((size, size), Image.BILINEAR))) for i in idx]


def hostile_payloads() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    smooth = np.add.outer(np.arange(3000), np.arange(3000)) % 256  # an X-ray-like compressible 9 MP image
    large = (smooth + rng.integers(0, 8, (3000, 3000))).clip(0, 255).astype(np.uint8)
    return {"png_bomb": _png_chunks(20_000, 20_000, 1, zlib.compress(b"\x00" * 2501 * 64)),
            "dicom_bomb": _dicom_bomb(),
            "truncated_png": _png_chunks(100, 300_000, 8, zlib.compress(b"\x00" * 101 * 4)),
            "large_valid": _png(large)}


# ------------------------------------------------------------------ requests
async def _raw(port: int, request: bytes, *, then_wait: float = 90.0) -> int:
    """Send ``request`` on a new connection and return the status of what comes back (0 if only a close)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(4096), then_wait)
        return int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else 0
    finally:
        writer.close()


def _multipart_head(length: int, key: bool) -> bytes:
    return (f"POST /v1/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {length}\r\n" + (f"X-API-Key: {KEY}\r\n" if key else "") + "\r\n").encode()


async def hostile(kind: str, client: httpx.AsyncClient, payloads: dict[str, bytes]) -> int:
    if kind in payloads:
        r = await client.post("/v1/predict", files={"file": ("x", payloads[kind])})
        return r.status_code
    port = client.base_url.port
    if kind == "oversized":
        return await _raw(port, _multipart_head(30_000_000, key=True) + b"--b\r\n")
    if kind == "bad_key":
        return await _raw(port, _multipart_head(50_000_000, key=False) + b"--b\r\n")
    if kind == "slow_headers":
        return await _raw(port, f"POST /v1/predict HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {KEY}\r\nX-Slow: ".encode())
    if kind == "slow_body":
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n\x89PNG'
        return await _raw(port, _multipart_head(100_000, key=True) + part)
    raise ValueError(kind)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def phase(url: str, pid: int, clients: int, seconds: float, hostile_rate: float, images: list[bytes],
                payloads: dict[str, bytes], seed: int) -> dict[str, Any]:
    """``clients`` closed-loop clients sending valid requests for ``seconds``, while an attacker opens
    hostile requests at ``hostile_rate`` per second (Poisson arrivals, kinds drawn uniformly) whatever the
    server's speed: a slow or refused request never holds a valid client back."""
    rng, lat, statuses = random.Random(seed), [], defaultdict(Counter)
    rss = [rss_mb(pid)]
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def one(kind: str, client: httpx.AsyncClient) -> None:
        t0 = time.perf_counter()
        try:
            if kind == "valid":
                code = (await client.post("/v1/predict", files={"file": ("x.png", rng.choice(images))})).status_code
                if code == 200:
                    lat.append(time.perf_counter() - t0)
            else:
                code = await hostile(kind, client, payloads)
        except (httpx.TransportError, OSError, TimeoutError) as e:
            code = f"transport:{type(e).__name__}"
        statuses[kind][str(code)] += 1

    async def valid_client(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            await one("valid", client)

    async def attacker(client: httpx.AsyncClient, pending: set) -> None:
        while hostile_rate > 0 and time.monotonic() < deadline:
            task = asyncio.create_task(one(rng.choice(KINDS), client))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(rng.expovariate(hostile_rate))

    async def sample_rss() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            rss.append(rss_mb(pid))

    t0, pending = time.monotonic(), set()
    # two clients: the attacker's connections never take the valid clients' places in the pool
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=120.0, limits=limits,
                                 trust_env=False) as client, \
            httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=120.0, trust_env=False,
                              limits=httpx.Limits(max_connections=None, max_keepalive_connections=0)) as attack:
        await asyncio.gather(sample_rss(), attacker(attack, pending), *(valid_client(client) for _ in range(clients)))
        took = time.monotonic() - t0
        unanswered = len(pending)  # slow requests still held open when the phase ended
        for task in list(pending):
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    rss.append(rss_mb(pid))
    ms = np.array(lat) * 1000
    n_hostile = sum(sum(c.values()) for k, c in statuses.items() if k != "valid") + unanswered
    n5xx = sum(n for c in statuses.values() for s, n in c.items() if s.startswith("5") and s != "503")
    shed = sum(c.get("503", 0) for c in statuses.values())
    transport = sum(n for c in statuses.values() for s, n in c.items() if s.startswith("transport"))
    return {"seconds": round(took, 1), "hostile_rate_per_s": hostile_rate,
            "hostile_share": round(n_hostile / max(1, n_hostile + len(lat)), 3), "valid_ok": len(lat),
            "valid_req_s": round(len(lat) / took, 1), "valid_p50_ms": round(float(np.percentile(ms, 50)), 1),
            "valid_p99_ms": round(float(np.percentile(ms, 99)), 1), "hostile_unanswered_at_end": unanswered,
            "responses": {k: dict(v) for k, v in statuses.items()}, "5xx": n5xx, "503": shed, "transport_errors": transport,
            "rss_mb_start": round(rss[0], 1), "rss_mb_peak": round(max(rss), 1), "rss_mb_end": round(rss[-1], 1)}


def _avx() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "AVX-512 BF16/VNNI" if "avx512_bf16" in flags and "avx512_vnni" in flags else "AVX2 only"


def report(res: dict[str, Any]) -> str:
    clean, hostile_ = res["clean"], res["hostile"]
    lines = [f"### medcls serve soak: {res['clients']} valid clients, {hostile_['seconds']:.0f} s with "
             f"{hostile_['hostile_rate_per_s']:.1f} hostile requests/s ({hostile_['hostile_share']:.0%} of all) after "
             f"{clean['seconds']:.0f} s clean ({res['date']}; {res['cpu']}, {res['isa']}, {os.cpu_count()} cores)", "",
             "| phase | valid req/s | valid p50 ms | valid p99 ms | 5xx (not 503) | 503 (load shed) | transport errors "
             "| RSS start / peak / end MB |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, p in (("clean", clean), ("hostile", hostile_)):
        lines.append(f"| {name} | {p['valid_req_s']} | {p['valid_p50_ms']} | {p['valid_p99_ms']} | {p['5xx']} | {p['503']} | "
                     f"{p['transport_errors']} | {p['rss_mb_start']} / {p['rss_mb_peak']} / {p['rss_mb_end']} |")
    lines += ["", f"Hostile phase, by kind ({hostile_['hostile_unanswered_at_end']} slow requests still held open by "
              "the server's deadlines when the phase ended):", "", "| request kind | responses (status: count) |",
              "|---|---|"]
    for kind, c in sorted(hostile_["responses"].items()):
        lines.append(f"| {kind} | {', '.join(f'{s}: {n}' for s, n in sorted(c.items()))} |")
    t = res["targets"]
    lines += ["", f"Targets: 5xx = {t['5xx']} (0; and {t['503']} load-shedding 503s); RSS growth over the hostile phase {t['rss_growth_mb']:+.1f} MB "
              f"(< 100); valid p99 hostile/clean = {t['p99_ratio']:.2f} (<= 3): "
              + ("all met" if t["met"] else "NOT met")]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("data/pneumoniamnist.npz"))
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=300.0, help="Length of the hostile phase.")
    ap.add_argument("--clean-seconds", type=float, default=60.0)
    ap.add_argument("--hostile", type=float, default=0.2, help="Share of hostile requests in the hostile phase.")
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--serve-args", default="", help="Extra `medcls serve` flags, e.g. '--decode-pixels 20000000'.")
    args = ap.parse_args()

    images, payloads = valid_images(args.data), hostile_payloads()
    with tempfile.TemporaryDirectory() as logs:
        server = Server(args.bundle, args.backend, "32", "5", None, Path(logs), "soak",
                        extra=("--api-key-env", "MEDCLS_SOAK_KEY", *args.serve_args.split()),
                        env={"MEDCLS_SOAK_KEY": KEY})
        try:
            server.wait_ready(120)
            asyncio.run(phase(server.url, server.proc.pid, 4, 5, 0.0, images, payloads, 0))  # warm-up
            clean = asyncio.run(phase(server.url, server.proc.pid, args.clients, args.clean_seconds, 0.0, images,
                                      payloads, 1))
            # hostile requests at the rate that makes them --hostile of all requests at the clean throughput
            rate = clean["valid_req_s"] * args.hostile / (1 - args.hostile)
            hostile_ = asyncio.run(phase(server.url, server.proc.pid, args.clients, args.seconds, rate,
                                         images, payloads, 2))
        finally:
            tail = server.log_tail(5)
            code = server.stop()
    growth = hostile_["rss_mb_end"] - hostile_["rss_mb_start"]
    ratio = hostile_["valid_p99_ms"] / clean["valid_p99_ms"]
    n5xx, shed = clean["5xx"] + hostile_["5xx"], clean["503"] + hostile_["503"]
    res = {"date": dt.date.today().isoformat(), "cpu": cpu_name(), "isa": _avx(), "clients": args.clients,
           "bundle": str(args.bundle), "backend": args.backend, "serve_args": args.serve_args, "clean": clean, "hostile": hostile_,
           "server_exit": code, "server_log_tail": tail,
           "targets": {"5xx": n5xx, "503": shed, "rss_growth_mb": growth, "p99_ratio": ratio,
                       "met": n5xx == 0 and growth < 100 and ratio <= 3}}
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
