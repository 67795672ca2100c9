"""``medcls predict | explain | export | serve``: use a trained run or an exported bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from ..errors import DataError, MedclsError
from .common import METADATA_HELP, Checkpoint, Device, metadata_option

Source = Annotated[Path, typer.Argument(help="A run directory or an exported bundle.")]


def expand_images(paths: list[Path]) -> list[str]:
    """Files as given; a directory becomes the image files inside it (recursive, sorted)."""
    from ..data.images import IMAGE_SUFFIXES

    out: list[str] = []
    for p in paths:
        if not p.is_dir():
            out.append(str(p))
            continue
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{p}: no image files in this directory (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
        out += [str(f) for f in found]
    return out


def _ood_text(r: dict) -> str:
    """The out-of-distribution column: flagged / ok, or n/a for a model without a gate."""
    ood = r.get("ood") or {}
    return "n/a" if not ood.get("available") else ("flagged" if ood["flagged"] else "ok")


def _write_csv(path: Path, results: list[dict]) -> None:
    import pandas as pd

    from ..utils import atomic_write_text

    rows = [{"file": r["file"], **{f"prob_{k}": v for k, v in r["probabilities"].items()},
             "predicted": r["predicted"], "ood": _ood_text(r), "ood_score": r["ood"].get("score")} for r in results]
    atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))


def predict(
    source: Source,
    images: Annotated[list[Path], typer.Argument(help="Image files or directories of them (PNG, JPEG, TIFF, BMP, DICOM; 8- or 16-bit).")],
    csv: Annotated[Path | None, typer.Option(help="Also write the probabilities to this CSV file.")] = None,
    checkpoint: Checkpoint = "best",
    device: Device = "auto",
    backend: Annotated[str, typer.Option(help="torch | onnx | int8 (onnx/int8 need a bundle)")] = "torch",
    metadata: Annotated[str | None, typer.Option(help=METADATA_HELP + " Used for every image.")] = None,
    refuse_ood: Annotated[bool, typer.Option("--refuse-ood", help="Report images the bundle's out-of-distribution "
                                             "gate flags as errors (exit 2) instead of predicting them.")] = False,
) -> int:
    """Calibrated class probabilities and the decision at the operating point for each image (tab-separated).

    An unreadable file is reported on stderr and the others are predicted; the exit status is then 2.
    """
    from .. import api
    from ..artefact import findings_text

    files = expand_images(images)
    obj = metadata_option(metadata)
    results = api.predict(source, files, checkpoint=checkpoint, device=device, backend=backend,
                          metadata=None if obj is None else [obj] * len(files), on_error="skip",
                          refuse_ood=refuse_ood)
    failed = [r for r in results if "error" in r]
    good = [r for r in results if "error" not in r]
    for r in good:  # multilabel: the labels at or above their thresholds, ";"-joined, or "no finding"
        r["predicted"] = r["predicted"] if isinstance(r["predicted"], str) else findings_text(r["predicted"])
    if good:
        names = list(good[0]["probabilities"])
        typer.echo("\t".join(["file", *names, "predicted", "ood"]))
        for r in good:
            typer.echo("\t".join([r["file"], *(f"{r['probabilities'][n]:.4f}" for n in names), r["predicted"],
                                  _ood_text(r)]))
    if csv and good:
        _write_csv(csv, good)
        typer.echo(f"written to {csv}")
    for r in failed:  # decode errors name their file already
        msg = r["error"]["message"]
        typer.echo(f"error: {msg}" if r["file"] in msg else f"error: {r['file']}: {msg}", err=True)
    return 2 if failed else 0


def explain(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `medcls train`.")],
    image: Annotated[Path, typer.Argument(help="Image file (PNG, JPEG, TIFF, BMP, DICOM; 8- or 16-bit).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write: image, heatmap and overlay.")],
    method: Annotated[str, typer.Option(help="gradcam | gradcam++ | eigencam | layercam")] = "gradcam",
    target_class: Annotated[str | None, typer.Option(help="Class to explain (default: the predicted class).")] = None,
    layer: Annotated[str | None, typer.Option(help="Target layer, e.g. net.layer3 (default: chosen per architecture).")] = None,
    checkpoint: Checkpoint = "best",
    metadata: Annotated[str | None, typer.Option(help=METADATA_HELP)] = None,
    array: Annotated[Path | None, typer.Option(help="Also save the raw map: float32 .npy in [0, 1] at the image's size.")] = None,
) -> None:
    """Save a class activation map (Grad-CAM & co) for one image and print the prediction."""
    from ..explain import explain_image
    from ..runs import load_run

    if array is not None and array.suffix != ".npy":
        raise MedclsError(f"--array must name a .npy file (NumPy's format), got {array}")
    r = explain_image(load_run(run_dir), image, method=method, target_class=target_class, layer=layer,
                      out_path=output, checkpoint=checkpoint, metadata=metadata_option(metadata), array_path=array)
    typer.echo(f"predicted {r['predicted']} (p = {r['probability']:.4f}); {method} for {r['target']} at "
               f"{r['layer']} ({r['map_size']}) written to {r['path']}" + (f"; map {r['array']}" if array else ""))


def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (its checkpoint's calibration travels with it).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle directory to create (must not exist or be empty).")],
    format: Annotated[str, typer.Option("--format", help="onnx (safetensors + model.onnx) | safetensors")] = "onnx",
    quantize: Annotated[str | None, typer.Option(help="int8: also write a static INT8 model.int8.onnx")] = None,
    torchscript: Annotated[bool, typer.Option("--torchscript", help="Also write model.ts (TorchScript).")] = False,
    checkpoint: Checkpoint = "best",
    max_int8_auc_drop: Annotated[float, typer.Option(help="Refuse INT8 if validation AUC drops more than this.")] = 0.01,
    prune: Annotated[float | None, typer.Option(help="Remove this fraction (0-0.95] of the channels first "
                                                     "(torch-pruning), fine-tune, re-calibrate on val.")] = None,
    prune_epochs: Annotated[int, typer.Option(help="Fine-tune epochs after --prune (0 = none).")] = 3,
) -> None:
    """Write a bundle: weights, ONNX (parity-checked on real images), optional INT8, bundle.json.

    With --prune: channel pruning, a short fine-tune on the run's training split, calibration re-fitted on val.
    """
    from ..export import export_bundle

    if format not in ("onnx", "safetensors"):
        raise MedclsError(f"--format must be onnx or safetensors, got {format!r}")
    info = export_bundle(run_dir, output, onnx=format == "onnx", quantize=quantize, torchscript=torchscript,
                         checkpoint=checkpoint, max_int8_auc_drop=max_int8_auc_drop, prune=prune,
                         prune_epochs=prune_epochs)
    if "pruning" in info:
        p = info["pruning"]
        typer.echo(f"pruned {p['ratio']:.0%} of the channels: {p['params_before']:,} -> {p['params_after']:,} "
                   f"parameters; val AUC {p['val_auc_before']:.4f} -> {p['val_auc_after']:.4f} as exported "
                   f"({p['fine_tune_epochs']} fine-tune epoch(s))")
    for name, f in info["files"].items():
        typer.echo(f"{name:<20} {f['bytes'] / 1e6:8.2f} MB  sha256 {f['sha256'][:12]}")
    if "onnx_parity" in info["checks"]:
        typer.echo(f"ONNX parity: max |p_onnx - p_torch| = {info['checks']['onnx_parity']['max_abs_prob_diff']:.2e}")
    if "int8" in info["checks"]:
        c = info["checks"]["int8"]
        typer.echo(f"INT8: val AUC {c['val_auc_fp32']:.4f} -> {c['val_auc_int8']:.4f} "
                   f"(calibrated on {c['calibration_images']} train images)")
    from ..tracking import log_bundle

    if (line := log_bundle(run_dir, output)) is not None:
        typer.echo(line)
    if not info["calibrated"]:
        typer.echo(f"warning: {info['notes'][-1]}", err=True)


SERVE_FLAGS = {"header_timeout": "--timeout-headers", "body_timeout": "--timeout-body",
               "max_upload_bytes": "--max-upload-mb (in bytes)"}  # settings whose flag is not their name


SERVE_ENV = "MEDCLS_SERVE"  # every option of `medcls serve` also reads MEDCLS_SERVE_<OPTION> (click's auto_envvar_prefix)


def serve(
    bundle: Annotated[Path, typer.Argument(envvar=f"{SERVE_ENV}_BUNDLE", show_envvar=True,
                                           help="Bundle directory from `medcls export` (or a run directory with --backend torch).")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    backend: Annotated[str, typer.Option(help="onnx | int8 | torch")] = "onnx",
    model_name: Annotated[str | None, typer.Option(help="Name on the Open Inference Protocol routes (/v2/models/NAME; default: the bundle folder's name).")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Require the key held in this environment variable (X-API-Key header).")] = None,
    api_key_file: Annotated[Path | None, typer.Option(help="Require the key held in this file (e.g. a mounted Kubernetes secret).")] = None,
    max_batch: Annotated[int, typer.Option(help="Micro-batching: images per model call at most.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="Micro-batching: wait at most this long to fill a batch (0 = off).")] = 5.0,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload.")] = 20.0,
    max_pixels: Annotated[int, typer.Option(help="Largest accepted image (pixels).")] = 40_000_000,
    threads: Annotated[int | None, typer.Option(help="Inference threads (onnxruntime).")] = None,
    max_concurrency: Annotated[int, typer.Option(help="Requests to /v1/ being decoded or predicted at most; more get 503 + Retry-After.")] = 64,
    max_receiving: Annotated[int, typer.Option(help="Requests to /v1/ whose bodies are arriving at most; more get 503 + Retry-After.")] = 256,
    refuse_ood: Annotated[bool, typer.Option("--refuse-ood", help="Refuse (422) images the bundle's out-of-distribution gate flags instead of answering with ood.flagged.")] = False,
    protect_metrics: Annotated[bool, typer.Option("--protect-metrics", help="Require the API key on /metrics too.")] = False,
    protect_docs: Annotated[bool, typer.Option("--protect-docs", help="Require the API key on /docs and /openapi.json too.")] = False,
    timeout_keep_alive: Annotated[float, typer.Option(help="Close idle keep-alive connections after this many seconds.")] = 5.0,
    timeout_headers: Annotated[float, typer.Option(help="408 and close when a request's headers take longer (slow clients).")] = 10.0,
    timeout_body: Annotated[float, typer.Option(help="408 and close when a request's body takes longer.")] = 60.0,
    min_body_rate: Annotated[float, typer.Option(help="408 and close when a body arrives slower than this (bytes/s, after 5 s).")] = 1024.0,
    decode_pixels: Annotated[int, typer.Option(help="Pixels decoded at once over all requests; larger bursts wait.")] = 20_000_000,
    timeout_graceful_shutdown: Annotated[float, typer.Option(help="On SIGTERM: stop accepting, let requests in flight finish for at most this many seconds, then exit.")] = 25.0,
) -> None:
    """Serve a bundle over HTTP: /v1/predict, /v1/predict/batch, /v1/explain, /metrics, a web page at /."""
    from ..extras import SERVE_MODULES, require_all

    require_all("medcls serve", *SERVE_MODULES)
    import uvicorn

    from ..inference import Predictor
    from ..serve import ServeSettings, create_app
    from ..serve.protocol import http_protocol
    from ..serve.shutdown import DrainingServer

    try:
        settings = ServeSettings(bundle=str(bundle), backend=backend, model_name=model_name, api_key_env=api_key_env,
                                 api_key_file=None if api_key_file is None else str(api_key_file), max_batch=max_batch,
                                 max_wait_ms=max_wait_ms, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                                 max_pixels=max_pixels, threads=threads, max_concurrency=max_concurrency,
                                 max_receiving=max_receiving, protect_metrics=protect_metrics,
                                 protect_docs=protect_docs, header_timeout=timeout_headers, body_timeout=timeout_body,
                                 min_body_rate=min_body_rate, decode_pixels=decode_pixels, refuse_ood=refuse_ood)
    except ValidationError as e:
        raise MedclsError("; ".join(f"{SERVE_FLAGS.get(str(x['loc'][0]), '--' + str(x['loc'][0]).replace('_', '-'))}: "
                                    f"{x['msg'].lower()} (got {x['input']!r})" for x in e.errors())) from None
    for flag, value in (("--timeout-keep-alive", timeout_keep_alive), ("--timeout-graceful-shutdown", timeout_graceful_shutdown)):
        if not value >= 0:
            raise MedclsError(f"{flag}: expected seconds >= 0, got {value}")
    predictor = Predictor.load(bundle, backend=backend, threads=threads, refuse_ood=refuse_ood)  # fail fast, before binding
    app_ = create_app(settings, predictor)
    typer.echo(f"serving {bundle} ({backend}) on http://{host}:{port}  (docs: /docs)", err=True)
    config = uvicorn.Config(app_, host=host, port=port, log_level="warning", access_log=False,
                            timeout_keep_alive=timeout_keep_alive, http=http_protocol(settings.header_timeout),
                            timeout_graceful_shutdown=timeout_graceful_shutdown)
    DrainingServer(config, app_.state).run()


def register(app: typer.Typer) -> None:
    for fn in (predict, explain, export):
        app.command()(fn)
    app.command(context_settings={"auto_envvar_prefix": SERVE_ENV, "show_default": True})(serve)
