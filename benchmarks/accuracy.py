"""Test accuracy of the default PneumoniaMNIST recipe over several seeds, beside the MedMNIST v2 baselines.

For each seed, ``medcls.train(config, overrides=[seed=..., output_dir=..., *--set], evaluate_split="test")``
trains and evaluates the best checkpoint on the test split; the script reports
test AUC / ACC (and sensitivity/specificity), training and wall seconds per
seed, mean ± sd, and whether the mean beats every MedMNIST v2 ResNet row.

    python benchmarks/accuracy.py --seeds 0 1 2 --json accuracy.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

# MedMNIST v2 (Yang et al., Scientific Data 2023), Table: PneumoniaMNIST test AUC / ACC.
from _common import cpu_name

import medcls
from medcls.metrics import HEADLINE_BRIEF

REFERENCE: list[tuple[str, float, float]] = [
    ("ResNet-18 (28)", 0.944, 0.854),
    ("ResNet-50 (224)", 0.962, 0.884),
    ("AutoKeras", 0.947, 0.878),
    ("Google AutoML Vision", 0.991, 0.946),
]
TIME_BUDGET_S = 600.0
METRICS = HEADLINE_BRIEF


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], digits: int = 3) -> str:
    m, s = mean_sd(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def run_seed(config: str, seed: int, output_dir: str, extra: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = medcls.train(config, overrides=[f"seed={seed}", f"output_dir={output_dir}", *extra], evaluate_split="test")
    wall = time.perf_counter() - t0
    m = run.metrics()
    test = m["eval"]["test"]
    return {"seed": seed, "run_dir": str(run.path), **{k: float(test[k]) for k in METRICS},
            "best_epoch": m["train"].get("best_epoch"), "epochs_run": m["train"].get("epochs_run"),
            "train_seconds": float(m["train"]["train_seconds"]), "wall_seconds": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/pneumoniamnist.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VAL", help="config override (repeatable)")
    ap.add_argument("--output-dir", default="runs/bench")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    rows = [run_seed(args.config, s, args.output_dir, args.set) for s in args.seeds]
    col = {k: [r[k] for r in rows] for k in (*METRICS, "train_seconds", "wall_seconds")}
    auc_m, acc_m = statistics.fmean(col["auc"]), statistics.fmean(col["accuracy"])
    resnets = [r for r in REFERENCE if r[0].startswith("ResNet")]
    beats_resnets = all(auc_m > a and acc_m > c for _, a, c in resnets)
    under_budget = all(r["wall_seconds"] < TIME_BUDGET_S for r in rows)

    print(f"## PneumoniaMNIST test, {args.config} {' '.join(args.set)}\n")
    print("| model | seed | AUC | ACC | sens | spec | train s | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| medcls | {r['seed']} | {r['auc']:.3f} | {r['accuracy']:.3f} | {r['sensitivity']:.3f} | "
              f"{r['specificity']:.3f} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |")
    print(f"| **medcls mean ± sd** | {len(rows)} seeds | {fmt(col['auc'])} | {fmt(col['accuracy'])} | "
          f"{fmt(col['sensitivity'])} | {fmt(col['specificity'])} | {fmt(col['train_seconds'], 0)} | "
          f"{fmt(col['wall_seconds'], 0)} |")
    for name, a, c in REFERENCE:
        print(f"| {name} (MedMNIST v2) | | {a:.3f} | {c:.3f} | | | | |")
    print(f"\nmean AUC {auc_m:.3f} / ACC {acc_m:.3f} {'beats' if beats_resnets else 'does NOT beat'} every "
          f"MedMNIST v2 ResNet row on both metrics ({', '.join(n for n, _, _ in resnets)}).  ")
    print(f"training time per seed (wall, incl. evaluation) {'is' if under_budget else 'is NOT'} under "
          f"{TIME_BUDGET_S / 60:.0f} minutes for every seed (max {max(col['wall_seconds']):.0f} s; "
          f"max train loop {max(col['train_seconds']):.0f} s).  ")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}, "
          f"{dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    if args.json:
        out = {"config": args.config, "overrides": args.set, "seeds": args.seeds, "runs": rows,
               "mean": {k: mean_sd(v)[0] for k, v in col.items()}, "sd": {k: mean_sd(v)[1] for k, v in col.items()},
               "reference_medmnist_v2": [{"model": n, "auc": a, "accuracy": c} for n, a, c in REFERENCE],
               "beats_every_resnet": beats_resnets, "under_10_min_per_seed": under_budget,
               "torch": torch.__version__, "cpu": cpu_name(), "threads": torch.get_num_threads(),
               "date": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
