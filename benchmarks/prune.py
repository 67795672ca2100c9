"""Channel pruning + INT8 on the default recipe: parameters, file size, ORT latency, throughput, test AUC (issue 17).

For each pruning ratio (default 0, 0.3, 0.5, 0.7) the run is exported with ``export_bundle(..., prune=r,
prune_epochs=E, quantize="int8")`` (ratio 0: the plain export), then both ONNX models (fp32 and static
INT8) are timed with onnxruntime on real validation images: median latency over ``--iters`` calls at
batch 1 and over ``--iters32`` calls at batch ``--batch``, images/s at that batch relative to the
unpruned fp32 model, and test AUC with its drop from the unpruned fp32 model. Writes a markdown table.

    python benchmarks/prune.py --run runs/pneumoniamnist-...            # the measurement (defaults)
    python benchmarks/prune.py                                          # trains configs/pneumoniamnist.yaml first
    python benchmarks/prune.py --run RUN --prune-epochs 1 --iters 20 --iters32 5 --ratios 0 0.5   # small scale

Small-scale flags (only to check that the script works): fewer ``--ratios``, ``--prune-epochs 1``,
fewer ``--iters`` / ``--iters32``.
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
from medcls.inference.ort import INPUT, OUTPUT, ort_logits, ort_session
from medcls.metrics import compute_metrics
from medcls.runs import Run, load_run

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = (("fp32", "model.onnx"), ("int8", "model.int8.onnx"))


def train_default(out: Path) -> Run:
    """A run of the default recipe (configs/pneumoniamnist.yaml, PneumoniaMNIST 28 px, from scratch)."""
    from medcls.api import train

    return train(ROOT / "configs" / "pneumoniamnist.yaml", overrides=[f"output_dir={out}"])


def split_inputs(run: Run, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image of ``split``, preprocessed as the model sees it, and its labels."""
    from medcls.data.sources import load_data

    table = getattr(load_data(run.config.data), split)
    pre = run.preprocess
    x = torch.stack([pre(table.load(i)) for i in range(len(table))]).numpy().astype(np.float32)
    return np.ascontiguousarray(x), np.asarray(table.labels)


def median_seconds(session, x: np.ndarray, warmup: int, iters: int) -> float:
    """Median wall time of one ``session.run`` on ``x`` over ``iters`` calls after ``warmup``."""
    for _ in range(warmup):
        session.run([OUTPUT], {INPUT: x})
    times = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        session.run([OUTPUT], {INPUT: x})
        times[i] = time.perf_counter() - t0
    return float(np.median(times))


def measure(bundle: Path, run: Run, pool: np.ndarray, test: tuple[np.ndarray, np.ndarray],
            args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per ONNX variant: file size, median latency at batch 1 and ``args.batch``, test AUC."""
    spec, out = run.dataset, {}
    for name, fname in VARIANTS:
        sess = ort_session(bundle / fname, threads=args.threads)
        b1 = median_seconds(sess, pool[:1], args.warmup, args.iters)
        bn = median_seconds(sess, pool[: args.batch], max(1, args.warmup // 10), args.iters32)
        p = probabilities(ort_logits(sess, test[0]), spec.task)
        m = compute_metrics(spec.task, test[1], p, class_names=list(spec.class_names),
                            positive_index=spec.positive_index)
        out[name] = {"file_bytes": (bundle / fname).stat().st_size, "b1_ms": 1000 * b1, "batch_ms": 1000 * bn,
                     "img_per_s": args.batch / bn, "test_auc": float(m["auc"])}
    return out


def export(run: Run, out: Path, ratio: float, args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    from medcls.export import export_bundle

    t0 = time.perf_counter()
    info = export_bundle(run, out, quantize="int8", checkpoint=args.checkpoint, max_int8_auc_drop=1.0,
                         **({"prune": ratio, "prune_epochs": args.prune_epochs} if ratio else {}))
    return info, time.perf_counter() - t0


def table(rows: list[dict[str, Any]], batch: int) -> list[str]:
    base = next(r for r in rows if r["ratio"] == 0 and r["variant"] == "fp32")
    lines = [f"| pruned | weights | parameters | ONNX file | p50 ms (b1) | p50 ms (b{batch}) | img/s (b{batch}) "
             f"| vs unpruned fp32 | test AUC | AUC drop | val AUC before → after fine-tune |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        p = r.get("pruning") or {}
        val = f"{p['val_auc_before']:.4f} → {p['val_auc_after']:.4f}" if p else "—"
        lines.append(f"| {r['ratio']:.0%} | {r['variant']} | {r['params']:,} | {r['file_bytes'] / 1e6:.2f} MB "
                     f"| {r['b1_ms']:.2f} | {r['batch_ms']:.2f} | {r['img_per_s']:.0f} "
                     f"| {r['img_per_s'] / base['img_per_s']:.2f}× | {r['test_auc']:.4f} "
                     f"| {base['test_auc'] - r['test_auc']:+.4f} | {val} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="a default-recipe run (else one is trained into --out)")
    ap.add_argument("--out", type=Path, default=None, help="keep the bundles (and a trained run) here; default: temp")
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    ap.add_argument("--prune-epochs", type=int, default=3, help="fine-tune epochs after pruning")
    ap.add_argument("--threads", type=int, default=2, help="torch threads and ORT intra_op_num_threads")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=200, help="timed batch-1 calls (median)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters32", type=int, default=50, help="timed calls at --batch (median)")
    ap.add_argument("--md", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if 0.0 not in args.ratios:
        ap.error("--ratios must include 0 (the unpruned baseline every row is compared with)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    tmp = tempfile.TemporaryDirectory(prefix="medcls-prune-bench-") if args.out is None else None
    out = Path(tmp.name) if tmp else args.out
    try:
        run = load_run(args.run) if args.run else train_default(out / "runs")
        val, test = split_inputs(run, "val"), split_inputs(run, "test")
        pool = np.ascontiguousarray(np.resize(val[0], (max(args.batch, 64), *val[0].shape[1:])))
        rows = []
        for ratio in sorted(args.ratios):
            bundle = out / f"bundle-p{round(100 * ratio):02d}"
            info, seconds = export(run, bundle, ratio, args)
            params = info["pruning"]["params_after"] if ratio else sum(
                p.numel() for p in run.build_model(args.checkpoint)[0].parameters())
            for variant, m in measure(bundle, run, pool, test, args).items():
                rows.append({"ratio": ratio, "variant": variant, "params": params, "export_seconds": seconds,
                             "pruning": info.get("pruning"), **m})
    finally:
        if tmp is not None:
            tmp.cleanup()
    head = (f"### Pruning + INT8: {run.model_spec.architecture} ({run.model_spec.stem} stem), input "
            f"{run.preprocess_cfg.in_chans}x{run.preprocess_cfg.size}x{run.preprocess_cfg.size}, {args.threads} threads")
    foot = (f"\nrun {run.path.name}; fine-tune {args.prune_epochs} epoch(s) per ratio; ORT medians of {args.iters} "
            f"(batch 1) and {args.iters32} (batch {args.batch}) calls on val images; test AUC on {len(test[1])} test "
            f"images (ORT). CPU {cpu_name()}, load average {load0:.2f} before / {os.getloadavg()[0]:.2f} after, "
            f"{dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    md = "\n".join([head, "", *table(rows, args.batch), foot, ""])
    print(md)
    if args.md:
        args.md.write_text(md)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "cpu": cpu_name(), "load_average_before": load0}, indent=2, default=str))


if __name__ == "__main__":
    main()
