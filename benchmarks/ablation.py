"""Ablation of the default PneumoniaMNIST recipe: each change's effect on test AUC / ACC over several seeds.

Every variant is the default recipe (``--config``) plus a few ``--set``-style
overrides, trained once per seed and evaluated once on the test split. Three
rows need no extra training: ``tta`` re-evaluates the baseline runs with
test-time augmentation, ``last`` evaluates the baseline runs' last checkpoint instead
of the best-validation-AUC one, and ``ensemble`` averages the baseline seeds'
probabilities (3x the training cost, shown for scale). ``half-ens`` averages
pairs of 5-epoch runs, an ensemble inside the same 10-epoch budget.

Results are appended to ``OUT/results.jsonl`` as each run finishes, so an
interrupted ablation resumes where it stopped; the table is printed from that file.

    python benchmarks/ablation.py --out runs/ablation --seeds 0 1 2
    python benchmarks/ablation.py --out runs/ablation --only baseline no_ema --reuse baseline:0=runs/bench/x
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

import numpy as np
import torch
from _common import cpu_name

import medcls
from medcls.evaluation import read_predictions
from medcls.metrics import HEADLINE_BRIEF, compute_metrics

# (name, overrides, what it tests). The baseline is the config as it is.
VARIANTS: list[tuple[str, list[str], str]] = [
    ("baseline", [], "default recipe"),
    ("mixup", ["train.mixup=0.2"], "+ mixup (alpha 0.2)"),
    ("no_ema", ["train.ema=false"], "- weight EMA"),
    ("no_ls", ["train.label_smoothing=0"], "- label smoothing"),
    ("strong_aug", ["transforms.strength=2"], "augmentation strength 2"),
    ("weak_aug", ["transforms.strength=0.5"], "augmentation strength 0.5"),
    ("no_cw", ["train.class_weights=none"], "- balanced class weights"),
    ("cutmix", ["train.cutmix=1.0"], "+ CutMix (alpha 1.0)"),
    ("hflip", ["transforms.hflip=true"], "+ horizontal flips"),
    ("half", ["train.epochs=5"], "5 epochs (the half-ens members)"),
    ("long", ["train.epochs=30"], "30 epochs (3x the budget)"),
]
DERIVED = {"tta": "baseline + flip TTA (eval only)",
           "last": "baseline, last epoch instead of best val AUC (eval only)",
           "ensemble": "mean of the baseline seeds (3x cost)",
           "half-ens": "2 x 5-epoch runs averaged (same cost)"}
METRICS = HEADLINE_BRIEF


def load_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_row(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def test_metrics(run_dir: str) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "metrics.json").read_text())["eval"]["test"]


def train_row(config: str, name: str, overrides: list[str], seed: int, out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = medcls.train(config, overrides=[f"seed={seed}", f"output_dir={out / name}", *overrides],
                       evaluate_split="test")
    m = run.metrics()
    return {"variant": name, "seed": seed, "run_dir": str(run.path), "overrides": overrides,
            **{k: float(m["eval"]["test"][k]) for k in METRICS},
            "best_epoch": m["train"].get("best_epoch"), "train_seconds": float(m["train"]["train_seconds"]),
            "wall_seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}


def reused_row(name: str, seed: int, run_dir: str) -> dict[str, Any]:
    test = test_metrics(run_dir)
    train = json.loads((Path(run_dir) / "metrics.json").read_text())["train"]
    return {"variant": name, "seed": seed, "run_dir": run_dir, "reused": True,
            **{k: float(test[k]) for k in METRICS}, "best_epoch": train.get("best_epoch"),
            "train_seconds": float(train["train_seconds"])}


def tta_row(base: dict[str, Any], out: Path) -> dict[str, Any]:
    m = medcls.evaluate(base["run_dir"], "test", tta=True, out_dir=out / "tta" / f"seed{base['seed']}")
    return {"variant": "tta", "seed": base["seed"], "run_dir": base["run_dir"],
            **{k: float(m["tta"][k]) for k in METRICS}, "train_seconds": base["train_seconds"]}


def last_row(base: dict[str, Any], out: Path) -> dict[str, Any]:
    m = medcls.evaluate(base["run_dir"], "test", checkpoint="last", tta=False,
                        out_dir=out / "last" / f"seed{base['seed']}")
    return {"variant": "last", "seed": base["seed"], "run_dir": base["run_dir"],
            **{k: float(m[k]) for k in METRICS}, "train_seconds": base["train_seconds"]}


def ensemble_metrics(run_dirs: list[str]) -> dict[str, float]:
    """Average the test probabilities of ``run_dirs`` (the same test cases) and score them at 0.5."""
    results = []
    for d in run_dirs:
        spec = medcls.load_run(d).dataset
        results.append(read_predictions(Path(d) / "eval-test" / "predictions.csv", class_names=spec.class_names,
                                        task=spec.task, positive_index=spec.positive_index))
    first = results[0]
    if any(sorted(r.ids) != sorted(first.ids) for r in results):
        raise SystemExit(f"predictions.csv of {run_dirs} do not list the same test images")
    probs = np.mean([r.align(first.ids).probs for r in results], axis=0)
    m = compute_metrics("binary", first.labels, probs, class_names=first.class_names, positive_index=1, threshold=0.5)
    return {k: float(m[k]) for k in METRICS}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(rows: list[dict[str, Any]], order: list[str]) -> str:
    by = {}
    for r in rows:
        by.setdefault(r["variant"], {})[r["seed"]] = r
    base = by.get("baseline", {})
    desc = {n: d for n, _, d in VARIANTS} | DERIVED
    lines = ["| variant | change | seeds | AUC | ΔAUC (paired) | ACC | ΔACC (paired) | train s / model |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in order:
        got = by.get(name)
        if not got:
            continue
        seeds = sorted(got)
        cells = []
        for k in ("auc", "accuracy"):
            m, s = mean_sd([got[i][k] for i in seeds])
            paired = [got[i][k] - base[i][k] for i in seeds if i in base]
            if name == "baseline" or not base:
                delta = ""
            elif paired:
                delta = f"{statistics.fmean(paired):+.3f}"
            else:  # ensembles have no same-seed partner: difference of means
                delta = f"{m - statistics.fmean(b[k] for b in base.values()):+.3f} (means)"
            cells += [f"{m:.3f} ± {s:.3f}", delta]
        secs = statistics.fmean(got[i]["train_seconds"] for i in seeds)
        lines.append(f"| {name} | {desc.get(name, '')} | {len(seeds)} | {cells[0]} | {cells[1]} | {cells[2]} | "
                     f"{cells[3]} | {secs:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/pneumoniamnist.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--only", nargs="+", default=None, help=f"variants to run (default all): "
                    f"{', '.join([n for n, _, _ in VARIANTS] + list(DERIVED))}")
    ap.add_argument("--reuse", action="append", default=[], metavar="VARIANT:SEED=RUN_DIR",
                    help="use an existing run (same config + overrides) instead of training it again")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    known = [n for n, _, _ in VARIANTS] + list(DERIVED)
    wanted = args.only or known
    if bad := sorted(set(wanted) - set(known)):
        raise SystemExit(f"unknown variant(s) {bad}; expected some of {known}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = {(r["variant"], r["seed"]) for r in load_rows(results)}

    for spec in args.reuse:
        try:
            key, run_dir = spec.split("=", 1)
            name, seed = key.split(":")
            seed = int(seed)
        except ValueError:
            raise SystemExit(f"--reuse expects VARIANT:SEED=RUN_DIR, got {spec!r}") from None
        if (name, seed) not in done:
            append_row(results, reused_row(name, seed, run_dir))
            done.add((name, seed))

    half_seeds = sorted({s for p in args.seeds for s in (2 * p, 2 * p + 1)})
    for name, overrides, _ in VARIANTS:
        if name not in wanted and not (name == "half" and "half-ens" in wanted):
            continue
        for seed in (half_seeds if name == "half" else args.seeds):
            if (name, seed) not in done:
                append_row(results, train_row(args.config, name, overrides, seed, args.out))
                done.add((name, seed))

    rows = load_rows(results)
    base = {r["seed"]: r for r in rows if r["variant"] == "baseline"}
    for name, row_fn in (("tta", tta_row), ("last", last_row)):  # eval-only rows of the baseline runs
        if name in wanted:
            for seed in args.seeds:
                if (name, seed) not in done and seed in base:
                    append_row(results, row_fn(base[seed], args.out))
    rows = load_rows(results)
    derived = []
    if "ensemble" in wanted and all(s in base for s in args.seeds) and len(args.seeds) > 1:
        derived.append({"variant": "ensemble", "seed": args.seeds[0],
                        **ensemble_metrics([base[s]["run_dir"] for s in args.seeds]),
                        "train_seconds": sum(base[s]["train_seconds"] for s in args.seeds)})
    half = {r["seed"]: r for r in rows if r["variant"] == "half"}
    if "half-ens" in wanted:
        for p in args.seeds:
            if 2 * p in half and 2 * p + 1 in half:
                pair = [half[2 * p], half[2 * p + 1]]
                derived.append({"variant": "half-ens", "seed": p,
                                **ensemble_metrics([r["run_dir"] for r in pair]),
                                "train_seconds": sum(r["train_seconds"] for r in pair)})
    if derived:
        # an ensemble "seed" is not paired with a baseline seed: compare means only
        for d in derived:
            d["seed"] = f"e{d['seed']}"
    print(f"## Ablation, PneumoniaMNIST test, {args.config}, seeds {args.seeds}\n")
    print(table(rows + derived, known))
    print("\nΔ = mean over seeds of (variant − baseline) for the same seed; ensembles compare means only.  ")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}, "
          f"{dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    (args.out / "derived.json").write_text(json.dumps(derived, indent=2))


if __name__ == "__main__":
    main()
