"""Ensembles of default-recipe runs as one model: test metrics with CIs vs each member, and its ONNX cost (issue 17).

Given K trained runs (e.g. seeds 0, 1, 2 of configs/pneumoniamnist.yaml), builds the ensemble with equal
weights and with weights fitted on val (``medcls ensemble``), evaluates every member and both ensembles on
test (bootstrap 95% CIs; accuracy at 0.5 on the calibrated probabilities, as MedMNIST reports it),
then exports the first member and the equal-weight ensemble with static INT8 and times both ONNX models
with onnxruntime (median latency at batch 1 and at ``--batch``), as ``benchmarks/prune.py`` does.

    for s in 0 1 2; do medcls train --config configs/pneumoniamnist.yaml --set seed=$s --run-dir runs/s$s; done
    python benchmarks/ensemble.py --runs runs/s0 runs/s1 runs/s2 --out /tmp/ens-bench --md ensemble.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import cpu_name
from prune import measure, split_inputs

from medcls.api import evaluate
from medcls.experiments.ensemble import build_ensemble
from medcls.export import export_bundle
from medcls.runs import Run, load_run


def scores(m: dict[str, Any]) -> dict[str, Any]:
    """Test AUC and accuracy at 0.5 (calibrated probabilities), with their bootstrap CIs."""
    ci = m["ci"]
    return {"auc": m["auc"], "auc_ci": (ci["auc"]["low"], ci["auc"]["high"]),
            "acc05": m["accuracy"], "acc05_ci": (ci["accuracy"]["low"], ci["accuracy"]["high"])}


def row_text(name: str, s: dict[str, Any], cost: dict[str, Any] | None) -> str:
    c = cost or {}
    fp32, int8 = c.get("fp32", {}), c.get("int8", {})
    cols = [name, f"{s['auc']:.4f} [{s['auc_ci'][0]:.4f}, {s['auc_ci'][1]:.4f}]",
            f"{s['acc05']:.4f} [{s['acc05_ci'][0]:.4f}, {s['acc05_ci'][1]:.4f}]"]
    if cost:
        cols += [f"{fp32['file_bytes'] / 1e6:.1f} MB", f"{fp32['b1_ms']:.2f}", f"{fp32['img_per_s']:.0f}",
                 f"{int8['img_per_s']:.0f}", f"{int8['test_auc']:.4f}"]
    else:
        cols += ["", "", "", "", ""]
    return "| " + " | ".join(cols) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="2+ trained runs of one recipe")
    ap.add_argument("--out", type=Path, required=True, help="where the ensembles and bundles go (must not exist)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=200, help="timed batch-1 calls (median)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters32", type=int, default=50, help="timed calls at --batch (median)")
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True)
    runs: list[Run] = [load_run(r) for r in args.runs]
    rows: dict[str, dict[str, Any]] = {}
    for r in runs:
        rows[f"{r.path.name} ({r.model_spec.architecture}, seed {r.config.seed})"] = scores(evaluate(r, "test"))
    ens = {w: build_ensemble(runs, args.out / f"ensemble-{w}", weights=w) for w in ("equal", "val")}
    for w, e in ens.items():
        rows[f"ensemble of {len(runs)}, {w} weights"] = scores(e.test)
    val, test = split_inputs(runs[0], "val"), split_inputs(runs[0], "test")
    pool = np.ascontiguousarray(np.resize(val[0], (max(args.batch, 64), *val[0].shape[1:])))
    cost = {}
    for key, src in ((next(iter(rows)), runs[0]), (f"ensemble of {len(runs)}, equal weights", ens["equal"].run)):
        bundle = args.out / f"bundle-{src.path.name}"
        export_bundle(src, bundle, quantize="int8", max_int8_auc_drop=1.0)
        cost[key] = measure(bundle, src, pool, test, args)
    isa = "AVX-512 BF16 + VNNI" if "avx512_bf16" in Path("/proc/cpuinfo").read_text() else "AVX2 only"
    lines = [f"{dt.date.today()}, {cpu_name()}, {os.cpu_count()} cores, {isa}, {args.threads} threads; "
             f"test n={ens['equal'].test['n']}",
             "", f"| model | test AUC [95% CI] | ACC @ 0.5 [95% CI] | ONNX | p50 ms b1 (fp32) | img/s b{args.batch} "
             f"(fp32) | img/s b{args.batch} (INT8) | INT8 test AUC |", "|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [row_text(k, s, cost.get(k)) for k, s in rows.items()]
    lines += ["", "weights fitted on val: " + ", ".join(f"{m['weight']:.3f}" for m in ens["val"].members)]
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")
    (args.out / "ensemble_bench.json").write_text(json.dumps({"rows": rows, "cost": cost}, indent=1, default=str))


if __name__ == "__main__":
    main()
