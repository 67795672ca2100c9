"""CPU inference latency and throughput of a bundle: torch eager vs ONNX Runtime fp32 vs ORT INT8, in one process.

Batch-1 latency (p50/p99 over ``--iters`` calls after ``--warmup``) and batch-``--batch``
throughput (``--iters32`` calls) for each backend, all with ``--threads`` intra-op threads.
Inputs are real validation images of the source run when it can be loaded, else uniform
noise in [0, 1] with the bundle's input shape. With ``--run`` the INT8 model's test-AUC
change (ORT fp32 vs ORT INT8 on the run's test split) is reported too.

    python benchmarks/latency.py --run runs/pneumoniamnist-... --json latency.json
    python benchmarks/latency.py --bundle bundles/pneumonia --iters 20 --iters32 3   # quick check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import cpu_name

from medcls.engine.predict import probabilities
from medcls.inference.ort import INPUT, OUTPUT
from medcls.inference.predictor import Predictor
from medcls.runs import Run, load_run

BACKENDS = ("torch", "onnx", "int8")
LABELS = {"torch": "torch eager fp32", "onnx": "ORT fp32", "int8": "ORT INT8 (static QDQ)"}


def runner(pred: Predictor):
    """A callable ``f(x: np.float32 array) -> logits`` doing only the model call."""
    if pred.model is not None:
        model = pred.model.eval()

        def run_torch(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        return run_torch
    sess = pred.session
    return lambda x: sess.run([OUTPUT], {INPUT: x})[0]


def val_inputs(run: Run | None, n: int, shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, str]:
    """Up to ``n`` preprocessed validation images (evenly spaced), or random [0, 1] inputs."""
    if run is not None:
        try:
            from medcls.data.sources import load_data

            table = load_data(run.config.data).val
            idx = np.linspace(0, len(table) - 1, min(n, len(table))).astype(int)
            pre = run.preprocess
            x = torch.stack([pre(table.load(int(i))) for i in idx]).numpy().astype(np.float32)
            if x.shape[1:] != shape:
                raise ValueError(f"val images preprocess to {x.shape[1:]}, the bundle expects {shape}")
            reps = -(-n // len(x))
            return np.ascontiguousarray(np.concatenate([x] * reps)[:n]), f"val split of {run.path} ({len(idx)} distinct)"
        except Exception as e:  # data moved, config relative to another cwd, ...
            logging.getLogger("medcls").warning("cannot use the run's val images (%s: %s); using random inputs",
                                                type(e).__name__, e)
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), dtype=np.float32), "random uniform [0, 1]"


def bench(fn, pool: np.ndarray, batch: int, warmup: int, iters: int, iters_b: int) -> dict[str, Any]:
    singles = [np.ascontiguousarray(pool[i : i + 1]) for i in range(len(pool))]
    for i in range(warmup):
        fn(singles[i % len(singles)])
    times = np.empty(iters)
    for i in range(iters):
        x = singles[i % len(singles)]
        t0 = time.perf_counter()
        fn(x)
        times[i] = time.perf_counter() - t0
    xb = np.ascontiguousarray(pool[:batch])
    for _ in range(min(3, max(1, warmup // 10))):
        fn(xb)
    t0 = time.perf_counter()
    for _ in range(iters_b):
        fn(xb)
    total = time.perf_counter() - t0
    ms = times * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "batch_img_per_s": batch * iters_b / total, "batch_seconds": total}


def test_auc(run: Run, bundle: Path, threads: int) -> dict[str, Any]:
    """Test AUC of ORT fp32 and ORT INT8 (uncalibrated probabilities, as the export check does)."""
    from medcls.data.sources import load_data
    from medcls.inference.ort import ort_logits, ort_session
    from medcls.metrics import compute_metrics

    spec = run.dataset
    table = load_data(run.config.data).test
    pre = run.preprocess
    x = torch.stack([pre(table.load(i)) for i in range(len(table))]).numpy()
    y = np.asarray(table.labels)
    out: dict[str, Any] = {"split": "test", "n_images": len(table)}
    for name, fname in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        p = probabilities(ort_logits(ort_session(bundle / fname, threads=threads), x), spec.task)
        m = compute_metrics(spec.task, y, p, class_names=list(spec.class_names), positive_index=spec.positive_index)
        out[f"auc_{name}"] = float(m["auc"])
    out["auc_drop"] = out["auc_fp32"] - out["auc_int8"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle exported with --quantize int8")
    ap.add_argument("--run", type=Path, default=None,
                    help="run directory: exports an INT8 bundle to a temp dir (unless --bundle) and reports test AUC")
    ap.add_argument("--checkpoint", default="best", help="checkpoint to export with --run")
    ap.add_argument("--max-int8-auc-drop", type=float, default=1.0,
                    help="passed to export_bundle with --run (default: never refuse, the drop is reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and ORT intra_op_num_threads")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=200, help="timed batch-1 calls")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters32", type=int, default=30, help="timed calls at --batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.bundle is None and args.run is None:
        ap.error("give --bundle DIR or --run RUN_DIR (or both)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    if load0 > 0.5:
        logging.getLogger("medcls").warning("1-min load average is %.2f before starting: the machine is not idle, "
                                            "so the numbers (torch eager most of all) will be inflated", load0)
    run = load_run(args.run) if args.run else None
    tmp = None
    export_s = None
    try:
        bundle = args.bundle
        if bundle is None:
            from medcls.export.bundle import export_bundle

            tmp = tempfile.TemporaryDirectory(prefix="medcls-latency-")
            bundle = Path(tmp.name) / "bundle"
            t0 = time.perf_counter()
            export_bundle(run, bundle, quantize="int8", checkpoint=args.checkpoint,
                          max_int8_auc_drop=args.max_int8_auc_drop)
            export_s = time.perf_counter() - t0
        preds = {b: Predictor.load(bundle, backend=b, threads=args.threads) for b in BACKENDS}
        info = preds["torch"].info
        pre = preds["torch"].preprocess_cfg
        shape = (pre.in_chans, pre.size, pre.size)
        pool, input_source = val_inputs(run, max(args.batch, 64), shape, args.seed)  # bundle alone: random inputs

        results: dict[str, dict[str, Any]] = {}
        ref = {}
        for b in BACKENDS:
            fn = runner(preds[b])
            ref[b] = probabilities(fn(np.ascontiguousarray(pool[: args.batch])), preds[b].spec.task)
            results[b] = bench(fn, pool, args.batch, args.warmup, args.iters, args.iters32)
            results[b]["max_abs_prob_diff_vs_torch"] = float(np.abs(ref[b] - ref["torch"]).max())
        for b in BACKENDS:
            r = results[b]
            for base in ("torch", "onnx"):
                r[f"speedup_b1_vs_{base}"] = results[base]["p50_ms"] / r["p50_ms"]
                r[f"speedup_batch_vs_{base}"] = r["batch_img_per_s"] / results[base]["batch_img_per_s"]
        auc = test_auc(run, bundle, args.threads) if run is not None else None
    finally:
        if tmp is not None:
            tmp.cleanup()

    model_spec = info.get("model", {})
    out: dict[str, Any] = {
        "bundle": str(args.bundle) if args.bundle else f"exported from {args.run} (temporary)",
        "run": str(args.run) if args.run else None, "export_seconds": export_s,
        "model": model_spec.get("architecture"), "stem": model_spec.get("stem"), "input": list(shape), "input_source": input_source,
        "threads": args.threads, "warmup": args.warmup, "iters": args.iters, "batch": args.batch,
        "iters_batch": args.iters32, "results": results, "int8_test_auc": auc,
        "int8_val_check": info.get("checks", {}).get("int8"),
        "load_average_before": load0, "load_average_after": os.getloadavg()[0],
        "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__, "cpu": cpu_name(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    print(f"## Inference latency: {model_spec.get('architecture')} ({model_spec.get('stem')} stem), input {'x'.join(map(str, shape))}, "
          f"{args.threads} threads\n")
    print(f"| backend | p50 ms (b1) | p99 ms (b1) | img/s (b{args.batch}) | speed-up vs eager (b1 / b{args.batch}) "
          f"| vs ORT fp32 (b1 / b{args.batch}) | max Δp vs eager |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for b in BACKENDS:
        r = results[b]
        print(f"| {LABELS[b]} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['batch_img_per_s']:.0f} "
              f"| {r['speedup_b1_vs_torch']:.2f}× / {r['speedup_batch_vs_torch']:.2f}× "
              f"| {r['speedup_b1_vs_onnx']:.2f}× / {r['speedup_batch_vs_onnx']:.2f}× "
              f"| {r['max_abs_prob_diff_vs_torch']:.1e} |")
    print(f"\nbatch 1: {args.iters} calls after {args.warmup} warm-up; batch {args.batch}: {args.iters32} calls; "
          f"inputs: {input_source}  ")
    if auc is not None:
        print(f"INT8 on the {auc['n_images']} test images: AUC fp32 {auc['auc_fp32']:.4f}, AUC int8 "
              f"{auc['auc_int8']:.4f}, drop **{auc['auc_drop']:+.4f}**  ")
    elif out["int8_val_check"]:
        c = out["int8_val_check"]
        print(f"INT8 export check (val split, from bundle.json): AUC fp32 {c['val_auc_fp32']:.4f}, int8 "
              f"{c['val_auc_int8']:.4f}, drop {c['auc_drop']:+.4f} (give --run for the test split)  ")
    print(f"CPU {out['cpu']}, load average {load0:.2f} before / {out['load_average_after']:.2f} after, "
          f"torch {out['torch']}, onnxruntime {out['onnxruntime']}, {out['date']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
