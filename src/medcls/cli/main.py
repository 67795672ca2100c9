"""Command line: ``medcls train | evaluate | predict | models | datasets``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import MedclsError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Medical image classification: train, evaluate, predict.")

Sets = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config value: --set train.epochs=5 (repeatable).")]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (survives redirection, e.g. under pytest)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbose: bool = False) -> None:
    h = _StderrHandler()
    h.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("medcls")
    root.handlers[:] = [h]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    for name in ("medcls.data", "medcls.models"):
        logging.getLogger(name).propagate = True


def _with_ci(metrics: dict, keys) -> dict[str, str]:
    """'0.9612 [0.9480, 0.9731]' per metric when a bootstrap CI is present."""
    ci = metrics.get("ci", {})
    out = {}
    for k in keys:
        v = metrics.get(k)
        if not isinstance(v, int | float):
            continue
        c = ci.get(k) if isinstance(ci, dict) else None
        out[k] = f"{v:.4f} [{c['low']:.4f}, {c['high']:.4f}]" if isinstance(c, dict) and "low" in c else f"{v:.4f}"
    return out


def _print_table(title: str, rows: dict[str, dict[str, float | str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    cols: list[str] = []
    for r in rows.values():
        cols += [c for c in r if c not in cols]
    table = Table(title=title)
    table.add_column("split")
    for c in cols:
        table.add_column(c, justify="right")
    for name, r in rows.items():
        table.add_row(name, *[(f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, ""))) for c in cols])
    Console().print(table)


SUMMARY = ("auc", "accuracy", "sensitivity", "specificity")
METADATA_HELP = "Fused models: JSON object of metadata (and text), e.g. '{\"age\": 40, \"view\": \"frontal\"}'."


def _metadata_option(raw: str | None) -> dict | None:
    """The --metadata option: a JSON object, or None when not given."""
    if raw is None:
        return None
    import json

    from ..errors import DataError

    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"--metadata must be a JSON object such as '{{\"age\": 40}}': {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"--metadata must be a JSON object, got {type(obj).__name__}")
    return obj


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (defaults when omitted).")] = None,
    sets: Sets = None,
    data_dir: Annotated[str | None, typer.Option(help="Where datasets are looked up (then $MEDCLS_DATA_DIR, then ./data).")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Exact run directory (must not exist). Default: runs/<name>-<time>.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run from its last checkpoint.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Initialise the model from local .safetensors weights.")] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Evaluate the best checkpoint on eval.split afterwards.")] = True,
) -> None:
    """Train a classifier; writes a run directory and prints the evaluation summary."""
    from .. import api

    overrides = list(sets or [])
    if data_dir:
        overrides.append(f"data.data_dir={data_dir}")
    if weights:
        overrides.append(f"model.weights={weights}")
    run = api.train(config, overrides=overrides, run_dir=run_dir, resume=resume,
                    evaluate_split=None)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    rows = {"val (best epoch)": {k: v for k, v in run.metrics().get("train", {}).get("val", {}).items()
                                 if k.removeprefix("val_") in SUMMARY and k.startswith("val_")}}
    rows = {"val (best epoch)": {k.removeprefix("val_"): v for k, v in rows["val (best epoch)"].items()}}
    if evaluate:
        m = api.evaluate(run, split=run.config.eval.split)
        rows[f"{run.config.eval.split} (95% CI)"] = _with_ci(m, SUMMARY)
    _print_table(f"{run.spec.name} · {run.config.model.name}", rows)
    typer.echo(f"run written to {run.path}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `medcls train`.")],
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    checkpoint: Annotated[str, typer.Option(help="best | last")] = "best",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    tta: Annotated[bool, typer.Option("--tta", help="Also report test-time augmentation (eval.tta).")] = False,
    gradcam_errors: Annotated[int, typer.Option("--gradcam-errors", min=0, help="Also save Grad-CAM overlays of the K most confident errors per group (FP/FN) under eval-SPLIT/gradcam/ (0 = off).")] = 0,
) -> None:
    """Evaluate a run on a split: metrics.json, predictions.csv and curves under RUN_DIR/eval-SPLIT/."""
    from .. import api

    m = api.evaluate(run_dir, split=split, checkpoint=checkpoint, device=device, tta=tta)
    from ..evaluation.evaluator import HEADLINE

    rows = {f"{split} @ {m.get('threshold', 0.5):g} (95% CI)": _with_ci(m, HEADLINE)}
    if "tta" in m:
        rows[f"{split} + TTA"] = _with_ci(m["tta"], HEADLINE)
    for name, op in (m.get("operating_points") or {}).items():
        if isinstance(op, dict) and "threshold" in op:
            keys = [k for k in ("sensitivity", "specificity", "ppv", "npv") if isinstance(op.get(k), dict)]
            flat = {**{k: op[k]["value"] for k in keys}, "ci": {k: op[k] for k in keys}}
            rows[f"{name} @ {op['threshold']:.3g}"] = _with_ci(flat, keys)
    _print_table(f"{run_dir} · {split} (n={m['n']})", rows)
    for note in m.get("postprocess", {}).get("notes", []):
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"written to {Path(run_dir) / f'eval-{split}'}")
    if gradcam_errors:
        from ..evaluation.gradcam import mine_errors
        from ..evaluation.report import write_report
        from ..runs import load_run

        run = load_run(run_dir)
        cases = mine_errors(run, split, k=gradcam_errors, checkpoint=checkpoint)
        write_report(run, split, m, Path(run_dir) / f"eval-{split}")  # now with the error gallery
        typer.echo(f"Grad-CAM of {len(cases)} errors written to {Path(run_dir) / f'eval-{split}' / 'gradcam'}")


@app.command()
def explain(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `medcls train`.")],
    image: Annotated[Path, typer.Argument(help="Image file (PNG, JPEG, TIFF, BMP; 8- or 16-bit).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write: image, heatmap and overlay.")],
    method: Annotated[str, typer.Option(help="gradcam | gradcam++ | eigencam | layercam")] = "gradcam",
    target_class: Annotated[str | None, typer.Option(help="Class to explain (default: the predicted class).")] = None,
    layer: Annotated[str | None, typer.Option(help="Target layer, e.g. net.layer3 (default: chosen per architecture).")] = None,
    checkpoint: Annotated[str, typer.Option(help="best | last")] = "best",
    metadata: Annotated[str | None, typer.Option(help=METADATA_HELP)] = None,
) -> None:
    """Save a class activation map (Grad-CAM & co) for one image and print the prediction."""
    from ..evaluation.gradcam import explain_image
    from ..runs import load_run

    r = explain_image(load_run(run_dir), image, method=method, target_class=target_class, layer=layer,
                      out_path=output, checkpoint=checkpoint, metadata=_metadata_option(metadata))
    typer.echo(f"predicted {r['predicted']} (p = {r['probability']:.4f}); {method} for {r['target']} "
               f"written to {r['path']}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (evaluate it first to carry calibration and thresholds).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle directory to create (must not exist or be empty).")],
    format: Annotated[str, typer.Option("--format", help="onnx (safetensors + model.onnx) | safetensors")] = "onnx",
    quantize: Annotated[str | None, typer.Option(help="int8: also write a static INT8 model.int8.onnx")] = None,
    torchscript: Annotated[bool, typer.Option("--torchscript", help="Also write model.ts (TorchScript).")] = False,
    checkpoint: Annotated[str, typer.Option(help="best | last")] = "best",
    max_int8_auc_drop: Annotated[float, typer.Option(help="Refuse INT8 if validation AUC drops more than this.")] = 0.01,
) -> None:
    """Write a bundle: weights, ONNX (parity-checked on real images), optional INT8, bundle.json."""
    from ..export import export_bundle

    if format not in ("onnx", "safetensors"):
        raise MedclsError(f"--format must be onnx or safetensors, got {format!r}")
    info = export_bundle(run_dir, output, onnx=format == "onnx", quantize=quantize, torchscript=torchscript,
                         checkpoint=checkpoint, max_int8_auc_drop=max_int8_auc_drop)
    for name, f in info["files"].items():
        typer.echo(f"{name:<20} {f['bytes'] / 1e6:8.2f} MB  sha256 {f['sha256'][:12]}")
    if "onnx_parity" in info["checks"]:
        typer.echo(f"ONNX parity: max |p_onnx - p_torch| = {info['checks']['onnx_parity']['max_abs_prob_diff']:.2e}")
    if "int8" in info["checks"]:
        c = info["checks"]["int8"]
        typer.echo(f"INT8: val AUC {c['val_auc_fp32']:.4f} -> {c['val_auc_int8']:.4f} (calibrated on {c['calibration_images']} train images)")
    typer.echo(f"bundle written to {output}")


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run directory or an exported bundle.")],
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, TIFF, BMP; 8- or 16-bit).")],
    csv: Annotated[Path | None, typer.Option(help="Also write the probabilities to this CSV file.")] = None,
    checkpoint: Annotated[str, typer.Option(help="best | last")] = "best",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    backend: Annotated[str, typer.Option(help="torch | onnx | int8 (onnx/int8 need a bundle)")] = "torch",
    metadata: Annotated[str | None, typer.Option(help=METADATA_HELP + " Used for every image.")] = None,
) -> None:
    """Print calibrated class probabilities and the decision at the operating point for each image."""
    from .. import api
    from ..evaluation.calibrate import findings_text

    obj = _metadata_option(metadata)
    meta = None if obj is None else [obj] * len(images)
    results = api.predict(run_dir, [str(p) for p in images], checkpoint=checkpoint, device=device, backend=backend,
                          metadata=meta)
    for r in results:  # multilabel: the labels at or above their thresholds, ";"-joined, or "no finding"
        r["predicted"] = r["predicted"] if isinstance(r["predicted"], str) else findings_text(r["predicted"])
    names = list(results[0]["probabilities"]) if results else []
    typer.echo("\t".join(["file", *names, "predicted"]))
    for r in results:
        typer.echo("\t".join([r["file"], *(f"{r['probabilities'][n]:.4f}" for n in names), r["predicted"]]))
    if csv:
        import pandas as pd

        from ..utils import atomic_write_text

        rows = [{"file": r["file"], **{f"prob_{k}": v for k, v in r["probabilities"].items()},
                 "predicted": r["predicted"]} for r in results]
        atomic_write_text(csv, pd.DataFrame(rows).to_csv(index=False))
        typer.echo(f"written to {csv}")


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory from `medcls export` (or a run directory with --backend torch).")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    backend: Annotated[str, typer.Option(help="onnx | int8 | torch")] = "onnx",
    api_key_env: Annotated[str | None, typer.Option(help="Require the key held in this environment variable (X-API-Key header).")] = None,
    max_batch: Annotated[int, typer.Option(help="Micro-batching: images per model call at most.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="Micro-batching: wait at most this long to fill a batch (0 = off).")] = 5.0,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload.")] = 20.0,
    max_pixels: Annotated[int, typer.Option(help="Largest accepted image (pixels).")] = 40_000_000,
    threads: Annotated[int | None, typer.Option(help="Inference threads (onnxruntime).")] = None,
) -> None:
    """Serve a bundle over HTTP: /v1/predict, /v1/predict/batch, /v1/explain, /metrics, a web page at /."""
    import uvicorn

    from ..inference.predictor import Predictor
    from ..serve import ServeSettings, create_app

    settings = ServeSettings(bundle=str(bundle), backend=backend, api_key_env=api_key_env, max_batch=max_batch,
                             max_wait_ms=max_wait_ms, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                             max_pixels=max_pixels, threads=threads)
    predictor = Predictor.load(bundle, backend=backend, threads=threads)  # fail fast, before binding the port
    app_ = create_app(settings, predictor)
    typer.echo(f"serving {bundle} ({backend}) on http://{host}:{port}  (docs: /docs)", err=True)
    uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="Baseline run directory (A).")],
    run_b: Annotated[Path, typer.Argument(help="Run directory to compare (B).")],
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    n_resamples: Annotated[int, typer.Option(help="Paired bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Difference B − A of AUC and other headline metrics, with a paired bootstrap 95% CI and p-value."""
    from rich.console import Console
    from rich.table import Table

    from ..evaluation.compare import compare_runs
    from ..utils import to_json

    res = compare_runs(run_a, run_b, split, n_resamples=n_resamples, seed=seed)
    table = Table(title=f"B − A on {split} (n={res['n']}, {res['n_resamples']} paired resamples)")
    for col in ("metric", "A", "B", "B − A", "95% CI", "p"):
        table.add_column(col, justify="right")
    for k, v in res.items():
        if isinstance(v, dict) and "diff" in v and "a" in v:
            table.add_row(k, f"{v['a']:.4f}", f"{v['b']:.4f}", f"{v['diff']:+.4f}",
                          f"[{v['low']:+.4f}, {v['high']:+.4f}]", f"{v['p_value']:.4f}")
    Console().print(table)
    if "delong_auc" in res:
        d = res["delong_auc"]
        typer.echo(f"DeLong test for AUC: diff {d['diff']:+.4f}, z {d['z']:.3f}, p {d['p']:.4f}")
    out = Path(run_b) / f"compare-{split}.json"
    from ..utils import atomic_write_text

    atomic_write_text(out, to_json(res) + "\n")
    typer.echo(f"written to {out}")


@app.command()
def models(pattern: Annotated[str, typer.Argument(help="Glob over timm model names, e.g. '*resnet*'.")] = "*") -> None:
    """List the timm architectures medcls can train (any timm name works)."""
    from ..models.factory import match_models

    names = match_models(pattern)
    if not names:
        raise MedclsError(f"no timm model matches {pattern!r}; try a wider glob such as '*{pattern.strip('*')[:3]}*'")
    for n in names:
        typer.echo(n)
    typer.echo(f"{len(names)} models", err=True)


@app.command()
def datasets() -> None:
    """List data source kinds and the built-in MedMNIST datasets."""
    from ..data.sources import SOURCES
    from ..data.sources.medmnist_info import INFO

    typer.echo("Source kinds (data.source: 'kind:argument'):")
    for name, doc in SOURCES.items():
        typer.echo(f"  {name:<10} {doc}")
    typer.echo("\nMedMNIST datasets (data.source: medmnist:<name>, data.options.size: 28|64|128|224):")
    for flag, info in INFO.items():
        n = info["n_samples"]
        typer.echo(f"  {flag:<15} {info['task']:<10} {len(info['labels']):>2} classes  {info['channels']} ch  "
                   f"{n['train']}/{n['val']}/{n['test']}  {info.get('license', '')}")


from .data import data_app  # noqa: E402
from .experiments import register as _register_experiments  # noqa: E402

app.add_typer(data_app, name="data")
_register_experiments(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors become one clear line on stderr and exit status 2."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    _setup_logging()
    try:
        status = app(args=argv, standalone_mode=False)
    except MedclsError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except FloatingPointError as e:
        typer.echo(f"error: {e}", err=True)
        return 1
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            return 1
        raise
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
