"""HTTP load test of ``medcls serve``: micro-batching ON vs OFF, bounded, on 127.0.0.1 only.

For each mode the server is started as a subprocess (``python -m medcls serve BUNDLE
--port <free> --backend onnx``), /ready is awaited, and ``--requests`` POST /v1/predict
requests carrying real PNG images (PneumoniaMNIST test images) are sent at each
``--concurrency`` level with httpx. Throughput (req/s), latency p50/p99, errors (any
non-200 answer or transport failure; must be 0) and the mean model batch size (from
/metrics) are reported; the server is then stopped by PID (SIGTERM, SIGKILL after 10 s).

    python benchmarks/serve_load.py --bundle bundles/pneumonia --json serve_load.json
    python benchmarks/serve_load.py --bundle bundles/pneumonia --requests 40 --concurrency 1 4   # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import cpu_name
from PIL import Image

HOST = "127.0.0.1"
MODES = {"on": ("32", "5"), "off": ("1", "0")}  # --max-batch, --max-wait-ms


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def png_images(path: Path, n: int) -> list[bytes]:
    with np.load(path) as d:
        imgs = d["test_images"]
    idx = np.linspace(0, len(imgs) - 1, min(n, len(imgs))).astype(int)
    out = []
    for i in idx:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(imgs[i])).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class Server:
    """``python -m medcls serve`` in a subprocess; always stopped by PID."""

    def __init__(self, bundle: Path, backend: str, max_batch: str, max_wait_ms: str, threads: int | None,
                 log_dir: Path, tag: str, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        cmd = [sys.executable, "-m", "medcls", "serve", str(bundle), "--host", HOST, "--port", str(self.port),
               "--backend", backend, "--max-batch", max_batch, "--max-wait-ms", max_wait_ms]
        if threads:
            cmd += ["--threads", str(threads)]
        self.cmd = cmd = [*cmd, *extra]
        self.log_path = log_dir / f"server-{tag}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def log_tail(self, n: int = 20) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        with httpx.Client(trust_env=False, timeout=2.0) as c:
            while time.monotonic() - t0 < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with code {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if c.get(f"{self.url}/ready").status_code == 200:
                        return time.monotonic() - t0
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


def batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of the medcls_batch_size histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10.0, trust_env=False).text
    vals = {}
    for line in text.splitlines():
        for k in ("medcls_batch_size_sum", "medcls_batch_size_count"):
            if line.startswith(k + " "):
                vals[k] = float(line.split()[1])
    return vals.get("medcls_batch_size_sum", 0.0), vals.get("medcls_batch_size_count", 0.0)


async def load(url: str, images: list[bytes], n: int, concurrency: int, timeout: float,
               deadline: float) -> dict[str, Any]:
    """``n`` requests from ``concurrency`` workers; stops issuing new requests at ``deadline`` (monotonic)."""
    lat: list[float] = []
    errors: dict[str, int] = {}
    issued = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < n and time.monotonic() < deadline:
            i = issued
            issued += 1
            files = {"file": (f"img{i}.png", images[i % len(images)], "image/png")}
            t0 = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/predict", files=files)
                await r.aread()
                key = None if r.status_code == 200 else f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                key = type(e).__name__
            dt_ = time.perf_counter() - t0
            if key is None:
                lat.append(dt_)
            else:
                errors[key] = errors.get(key, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits, trust_env=False) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000 if lat else np.asarray([np.nan])
    n_err = sum(errors.values())
    return {"concurrency": concurrency, "requests": issued, "ok": len(lat), "errors": n_err, "error_kinds": errors,
            "truncated_by_deadline": issued < n, "seconds": wall, "req_per_s": len(lat) / wall if wall else 0.0,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(np.mean(ms))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True, help="bundle directory from `medcls export`")
    ap.add_argument("--backend", default="onnx", help="onnx | int8 | torch")
    ap.add_argument("--data", type=Path, default=Path("data/pneumoniamnist.npz"), help="npz with test_images")
    ap.add_argument("--images", type=int, default=256, help="distinct test images to send (cycled)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=["on", "off"])
    ap.add_argument("--warmup", type=int, default=20, help="untimed requests after /ready")
    ap.add_argument("--threads", type=int, default=None, help="server --threads (ORT intra-op; default: ORT's)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    ap.add_argument("--startup-timeout", type=float, default=120.0)
    ap.add_argument("--deadline", type=float, default=1800.0, help="overall seconds; no new requests after it")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not (args.bundle / "bundle.json").is_file():
        ap.error(f"{args.bundle} is not a bundle (no bundle.json)")
    if not args.data.is_file():
        ap.error(f"{args.data} not found (PneumoniaMNIST npz with key test_images)")

    deadline = time.monotonic() + args.deadline
    images = png_images(args.data, args.images)
    results: dict[str, dict[str, Any]] = {}
    log_dir = Path(tempfile.mkdtemp(prefix="medcls-serve-load-"))
    for mode in args.modes:
        max_batch, max_wait = MODES[mode]
        if time.monotonic() > deadline:
            print(f"overall deadline reached; mode {mode} skipped", file=sys.stderr)
            break
        srv = Server(args.bundle, args.backend, max_batch, max_wait, args.threads, log_dir, mode)
        levels = []
        try:
            startup = srv.wait_ready(min(args.startup_timeout, max(1.0, deadline - time.monotonic())))
            warm = asyncio.run(load(srv.url, images, args.warmup, max(args.concurrency), args.timeout, deadline))
            for c in args.concurrency:
                s0, n0 = batch_stats(srv.url)
                r = asyncio.run(load(srv.url, images, args.requests, c, args.timeout, deadline))
                s1, n1 = batch_stats(srv.url)
                r["mean_model_batch"] = (s1 - s0) / (n1 - n0) if n1 > n0 else None
                levels.append(r)
        finally:
            code = srv.stop()
        results[mode] = {"max_batch": int(max_batch), "max_wait_ms": float(max_wait), "startup_seconds": startup,
                         "warmup_errors": warm["errors"], "levels": levels, "server_exit_code": code,
                         "command": srv.cmd[1:]}

    total_errors = sum(r["errors"] for m in results.values() for r in m["levels"])
    top = max(args.concurrency)
    tp = {m: next((r["req_per_s"] for r in v["levels"] if r["concurrency"] == top), None) for m, v in results.items()}
    ratio = tp["on"] / tp["off"] if tp.get("on") and tp.get("off") else None
    out: dict[str, Any] = {
        "bundle": str(args.bundle), "backend": args.backend, "requests_per_level": args.requests,
        "concurrency": args.concurrency, "distinct_images": len(images), "request_timeout_s": args.timeout,
        "results": results, "total_errors": total_errors, "on_off_throughput_ratio_at_max_concurrency": ratio,
        "max_concurrency": top, "cpu": cpu_name(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    print(f"## medcls serve load test: {args.bundle.name} ({args.backend}), {args.requests} POST /v1/predict per "
          f"level, {len(images)} distinct PNGs\n")
    print("| micro-batching | concurrency | req/s | p50 ms | p99 ms | errors | mean model batch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, v in results.items():
        label = f"{mode.upper()} (max-batch {v['max_batch']}, wait {v['max_wait_ms']:g} ms)"
        for r in v["levels"]:
            mb = f"{r['mean_model_batch']:.1f}" if r["mean_model_batch"] is not None else "–"
            trunc = " (deadline)" if r["truncated_by_deadline"] else ""
            print(f"| {label} | {r['concurrency']} | {r['req_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                  f"| {r['errors']}{trunc} | {mb} |")
    if ratio is not None:
        print(f"\nthroughput ON/OFF at concurrency {top}: **{ratio:.2f}×**  ")
    print(f"errors: {total_errors}" + ("" if total_errors == 0 else " — NOT ZERO, see the server logs in "
                                       f"{log_dir}") + "  ")
    print(f"client and server share this machine ({os.cpu_count()} CPUs, {out['cpu']}); "
          f"load average {out['load_average'][0]:.2f}; {out['date']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    if total_errors:
        sys.exit(1)
    shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
