"""``medcls predict | explain | export | serve``: use a trained run or an exported bundle."""

from __future__ import annotations

import csv as _csv
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from ..errors import MedclsError
from .common import METADATA_HELP, Checkpoint, Device, metadata_option

Source = Annotated[Path, typer.Argument(help="A run directory or an exported bundle.")]


def _row_printer(csv: Path | None, stack: ExitStack):
    """Prints a batch's results as tab-separated rows (the header before the first), and writes them to ``csv``
    as they come (the file appears, complete, at the end)."""
    from ..inference.batch import columns, ood_text, predicted_text, table_row
    from ..utils import atomic_writer

    state: dict = {}

    def show(results: list[dict]) -> None:
        if not results:
            return
        if not state:
            names = list(results[0]["probabilities"])
            typer.echo("\t".join(["file", *names, "predicted", "ood"]))
            if csv is not None:
                state["csv"] = _csv.writer(stack.enter_context(atomic_writer(csv)), lineterminator="\n")
                state["csv"].writerow(columns(names))
        for r in results:
            typer.echo("\t".join([r["file"], *(f"{p:.4f}" for p in r["probabilities"].values()), predicted_text(r),
                                  ood_text(r)]))
            if csv is not None:
                state["csv"].writerow(table_row(r))

    return show, state


def predict(
    source: Source,
    images: Annotated[list[str] | None, typer.Argument(
        help="Image files, directories of them (recursive; PNG, JPEG, TIFF, BMP, DICOM; 8- or 16-bit) or data "
             "sources such as hdf5:PATH, folder:PATH, medmnist:NAME (every sample of --split).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder for an archive's predictions: "
                      "shards as they finish, then predictions.csv|.parquet and errors.csv; run the same command "
                      "again to resume an interrupted job.")] = None,
    list_file: Annotated[Path | None, typer.Option("--list", help="File of image paths, one per line (relative "
                         "to the file's folder; '#' comments); - reads standard input.")] = None,
    split: Annotated[str, typer.Option(help="Data sources: all | train | val | test")] = "all",
    format: Annotated[str, typer.Option("--format", help="With --output: csv | parquet")] = "csv",
    shard_size: Annotated[int, typer.Option(help="With --output: inputs per shard file.")] = 10_000,
    csv: Annotated[Path | None, typer.Option(help="Without --output: also write the rows to this CSV file.")] = None,
    checkpoint: Checkpoint = "best",
    device: Device = "auto",
    backend: Annotated[str, typer.Option(help="auto (a bundle: onnx on CPU; else torch) | torch | onnx | int8 (onnx/int8 need a bundle)")] = "auto",
    metadata: Annotated[str | None, typer.Option(help=METADATA_HELP + " Used for every image.")] = None,
    refuse_ood: Annotated[bool, typer.Option("--refuse-ood", help="Report images the bundle's out-of-distribution "
                                             "gate flags as errors (exit 2) instead of predicting them.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 64,
    num_workers: Annotated[int | None, typer.Option(help="Worker processes (on a CPU each decodes and "
                                                    "predicts; 0: all in the main one; default: one per core, at "
                                                    "most 8).")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Progress bar on stderr "
                                                  "(default: when stderr is a terminal).")] = None,
) -> int:
    """Calibrated class probabilities and the decision at the operating point for each image.

    Without --output: tab-separated rows on stdout as each batch is predicted. With --output DIR: an archive
    job that survives interruptions (the same command resumes it) and spreads over `torchrun --nproc_per_node=K`.
    An unreadable file is reported on stderr and the others are predicted; the exit status is then 2.
    """
    import sys

    from tqdm import tqdm

    from .. import api

    if csv is not None and output is not None:
        raise MedclsError(f"--csv is for the stdout table; with --output the predictions go to {output}/")
    if not images and list_file is None:
        raise MedclsError("give images, folders, a data source (e.g. hdf5:PATH) or --list FILE")
    obj = metadata_option(metadata)
    show = progress if progress is not None else sys.stderr.isatty()
    kwargs = dict(list_file=list_file, split=split, format=format, checkpoint=checkpoint, device=device,
                  backend=backend, metadata=obj, refuse_ood=refuse_ood, batch_size=batch_size,
                  num_workers=num_workers, progress=show,
                  on_error=lambda line: tqdm.write(f"error: {line}", file=sys.stderr))
    if output is None:
        with ExitStack() as stack:
            printer, state = _row_printer(csv, stack)
            summary = api.predict_archive(source, images or [], on_results=printer, **kwargs)
        if csv is not None and state:
            typer.echo(f"written to {csv}")
        return 2 if summary.errors else 0
    try:
        summary = api.predict_archive(source, images or [], output=output, shard_size=shard_size, **kwargs)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: the finished shards in {output} are kept; run the same command again to "
                   "resume", err=True)
        return 130
    _say_done(summary)
    return 2 if summary.errors else 0


def _say_done(s) -> None:
    if s.final is None:  # a torchrun rank other than 0: rank 0 reports
        return
    what = f"{s.predicted} predictions in {s.final}, {s.errors} errors in {s.errors_file}"
    if s.already_complete:
        typer.echo(f"{s.output} is complete already ({what}): nothing to do")
    else:
        again = f"; {s.shards_skipped} of {s.shards} shards were already done" if s.shards_skipped else ""
        typer.echo(what + again)


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
    triton: Annotated[Path | None, typer.Option(help="Also write a Triton model repository here: "
                                                "<REPO>/<bundle name>/config.pbtxt and 1/model.onnx.")] = None,
    recalibration: Annotated[Path | None, typer.Option(help="A validate-NAME/ folder of `medcls validate "
                                                       "--recalibrate`: export with that recalibration (the bundle "
                                                       "and its model card say so).")] = None,
) -> None:
    """Write a bundle: weights, ONNX (parity-checked on real images), optional INT8, bundle.json.

    With --prune: channel pruning, a short fine-tune on the run's training split, calibration re-fitted on val.
    """
    from ..export import export_bundle
    from ..export.triton import check_triton_target, write_triton_repository

    if format not in ("onnx", "safetensors"):
        raise MedclsError(f"--format must be onnx or safetensors, got {format!r}")
    if triton is not None:
        if format != "onnx":
            raise MedclsError("--triton serves the ONNX graph: export with --format onnx")
        check_triton_target(triton, output)  # before the export's work
    info = export_bundle(run_dir, output, onnx=format == "onnx", quantize=quantize, torchscript=torchscript,
                         checkpoint=checkpoint, max_int8_auc_drop=max_int8_auc_drop, prune=prune,
                         prune_epochs=prune_epochs, recalibration=recalibration)
    if "recalibrated" in info:
        r = info["recalibrated"]
        typer.echo(f"RECALIBRATED ({r['method']}) on {r['fitted_on']['n']} cases of {r['fitted_on']['source']}; "
                   "bundle.json 'recalibrated' and model_card.md say so")
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
    if triton is not None:
        typer.echo(f"Triton model repository: {write_triton_repository(output, triton)} (config.pbtxt, 1/model.onnx)")
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


def drift(
    bundle: Annotated[Path, typer.Argument(help="A bundle from `medcls export` (it holds the validation reference).")],
    images: Annotated[list[str] | None, typer.Argument(help="Recent images: files, folders (recursive) or a data "
                                                       "source such as folder:PATH, hdf5:PATH.")] = None,
    list_file: Annotated[Path | None, typer.Option("--list", help="File of image paths, one per line.")] = None,
    split: Annotated[str, typer.Option(help="Data sources: all | train | val | test")] = "all",
    max_images: Annotated[int, typer.Option(help="Use at most this many images, evenly spaced.")] = 1000,
    alpha: Annotated[float, typer.Option(help="Significance level (Bonferroni over the input tests).")] = 0.05,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result to this JSON file.")] = None,
    fail_on_drift: Annotated[bool, typer.Option("--fail-on-drift", help="Exit with status 1 when drifted (for a "
                                                "scheduled check).")] = False,
) -> int:
    """Have recent images drifted from the bundle's validation data? OOD scores, features, flagged share, and the
    prediction mix (reported apart: a change of prevalence alone is not drift of the inputs)."""
    from rich.console import Console
    from rich.table import Table

    from ..inference.drift import check_drift
    from ..utils import atomic_write_json

    if not images and list_file is None:
        raise MedclsError("give recent images: files, folders, a data source (e.g. folder:PATH) or --list FILE")
    r = check_drift(bundle, images or [], list_file=list_file, split=split, max_images=max_images, alpha=alpha)
    table = Table(title=f"drift of {r['used']} recent images against {r['n_reference']} validation images "
                        f"(alpha {alpha}, Bonferroni: p < {r['bonferroni_bar']:.3g})")
    for c in ("test", "statistic", "p-value", "recent", "reference", ""):
        table.add_column(c)
    for t in r["tests"]:
        flag = ("changed" if t["test"] == "prediction mix" else "DRIFT") if t["drifted"] else ""
        table.add_row(t["test"], f"{t['statistic']:.4g}", f"{t['p_value']:.3g}", t["recent"], t["reference"], flag)
    Console().print(table)
    for e in r["errors"]:
        typer.echo(f"error: {e}", err=True)
    typer.echo(f"inputs {'HAVE DRIFTED' if r['drifted'] else 'have not drifted'} from the validation data")
    if json_out is not None:
        atomic_write_json(json_out, r)
    return 1 if r["drifted"] and fail_on_drift else 0


def register(app: typer.Typer) -> None:
    for fn in (predict, explain, export, drift):
        app.command()(fn)
    app.command(context_settings={"auto_envvar_prefix": SERVE_ENV, "show_default": True})(serve)
