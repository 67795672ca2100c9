"""``medcls train | calibrate | evaluate | compare``: runs from config to clinical evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from ..reports.kit import fmt_threshold
from .common import Checkpoint, ConfigFile, DataDir, Device, Sets, overrides, print_table, with_ci

RunDir = Annotated[Path, typer.Argument(help="A run directory written by `medcls train`.")]


def train(
    config: ConfigFile = None,
    sets: Sets = None,
    data_dir: DataDir = None,
    run_dir: Annotated[Path | None, typer.Option(help="Exact run directory (must not exist). Default: runs/<name>-<time>.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run from its last checkpoint.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Initialise the model from local .safetensors weights.")] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Evaluate the best checkpoint on eval.split afterwards.")] = True,
) -> None:
    """Train a classifier, calibrate it on val; writes a run directory and prints the evaluation summary."""
    from .. import api
    from ..metrics import HEADLINE_BRIEF

    extra = overrides(sets, data_dir) + ([f"model.weights={weights}"] if weights else [])
    run = api.train(config, overrides=extra, run_dir=run_dir, resume=resume, evaluate_split=evaluate or None)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    val = run.metrics().get("train", {}).get("val", {})
    rows = {"val (best epoch)": {k.removeprefix("val_"): v for k, v in val.items()
                                 if k.startswith("val_") and k.removeprefix("val_") in HEADLINE_BRIEF}}
    if evaluate:
        m = json.loads((run.path / f"eval-{run.config.eval.split}" / "metrics.json").read_text())
        rows[f"{run.config.eval.split} (95% CI)"] = with_ci(m, HEADLINE_BRIEF)
    print_table(f"{run.dataset.name} · {run.config.model.name}", rows)
    typer.echo(f"run written to {run.path}")


def calibrate(
    run_dir: RunDir,
    checkpoint: Checkpoint = "best",
    device: Device = "auto",
) -> None:
    """Fit a checkpoint's temperature and operating points on the val split (stored in RUN/postprocess.json)."""
    from .. import api

    post = api.calibrate(run_dir, checkpoint, device=device)
    ck = post.checkpoint or {}
    rule = (f"{post.selected} at {fmt_threshold(post.threshold)}" if post.thresholds is None
            else f"{post.selected} per label")
    for note in post.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"calibrated {checkpoint} (epoch {ck.get('epoch')}) on {post.fitted_on} (n={post.n_val}): "
               f"T = {post.temperature:.4g}, operating point {rule}; written to {Path(run_dir) / 'postprocess.json'}")


def evaluation_rows(m: dict, split: str) -> dict[str, dict[str, str]]:
    from ..metrics import HEADLINE_SUMMARY

    rows = {f"{split} @ {m.get('threshold', 0.5):g} (95% CI)": with_ci(m, HEADLINE_SUMMARY)}
    if "tta" in m:
        rows[f"{split} + TTA"] = with_ci(m["tta"], HEADLINE_SUMMARY)
    for name, op in (m.get("operating_points") or {}).items():
        if isinstance(op, dict) and "threshold" in op:
            keys = [k for k in ("sensitivity", "specificity", "ppv", "npv") if isinstance(op.get(k), dict)]
            flat = {**{k: op[k]["value"] for k in keys}, "ci": {k: op[k] for k in keys}}
            rows[f"{name} @ {fmt_threshold(op['threshold'], 3)}"] = with_ci(flat, keys)
    return rows


def evaluate(
    run_dir: RunDir,
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    checkpoint: Checkpoint = "best",
    device: Device = "auto",
    tta: Annotated[bool, typer.Option("--tta", help="Also report test-time augmentation (eval.tta).")] = False,
    gradcam_errors: Annotated[int, typer.Option("--gradcam-errors", min=0, help="Also save Grad-CAM overlays of the K most confident errors per group (FP/FN) under eval-SPLIT/gradcam/ (0 = off).")] = 0,
) -> None:
    """Evaluate a checkpoint on a split with its stored calibration: metrics, predictions, report, model card."""
    from .. import api

    m = api.evaluate(run_dir, split=split, checkpoint=checkpoint, device=device, tta=tta)
    out = Path(run_dir) / f"eval-{split}"
    print_table(f"{run_dir} · {split} (n={m['n']})", evaluation_rows(m, split))
    for note in m.get("postprocess", {}).get("notes", []):
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"written to {out}")
    if gradcam_errors:
        from ..explain import mine_errors
        from ..reports.evaluation import write_report
        from ..runs import load_run

        run = load_run(run_dir)
        cases = mine_errors(run, split, k=gradcam_errors, checkpoint=checkpoint, result=m)
        write_report(run, split, m.metrics, out, labels=m.labels, probs=m.probs)  # now with the error gallery
        typer.echo(f"Grad-CAM of {len(cases)} errors written to {out / 'gradcam'}")


def compare(
    run_a: Annotated[Path, typer.Argument(help="Baseline run directory (A).")],
    run_b: Annotated[Path, typer.Argument(help="Run directory to compare (B).")],
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    n_resamples: Annotated[int, typer.Option(help="Paired bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Difference B − A of AUC and other headline metrics, with a paired bootstrap 95% CI and p-value."""
    from ..evaluation.compare import compare_runs
    from ..utils import atomic_write_text, to_json

    res = compare_runs(run_a, run_b, split, n_resamples=n_resamples, seed=seed)
    rows = {k: {"A": f"{v['a']:.4f}", "B": f"{v['b']:.4f}", "B − A": f"{v['diff']:+.4f}",
                "95% CI": f"[{v['low']:+.4f}, {v['high']:+.4f}]", "p": f"{v['p_value']:.4f}"}
            for k, v in res.items() if isinstance(v, dict) and "diff" in v and "a" in v}
    print_table(f"B − A on {split} (n={res['n']}, {res['n_resamples']} paired resamples)", rows, first="metric")
    if "delong_auc" in res:
        d = res["delong_auc"]
        typer.echo(f"DeLong test for AUC: diff {d['diff']:+.4f}, z {d['z']:.3f}, p {d['p']:.4f}")
    out = Path(run_b) / f"compare-{split}.json"
    atomic_write_text(out, to_json(res) + "\n")
    typer.echo(f"written to {out}")


def register(app: typer.Typer) -> None:
    for fn in (train, calibrate, evaluate, compare):
        app.command()(fn)
