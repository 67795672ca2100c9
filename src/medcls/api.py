"""Python API: ``train``, ``calibrate``, ``evaluate``, ``predict`` (the CLI is a thin layer over these)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .artefact import CHECKPOINTS, TEXT_DIR, ModelSpec, Postprocess
from .config import Config, build_config, load_config
from .data.sources import LoadedData, load_data
from .engine.distributed import DistInfo, broadcast_object, cleanup, init_distributed
from .engine.trainer import Callback, Trainer, resolve_device
from .errors import ConfigError, RunError
from .logs import ensure_console_logging
from .runs import LEAKAGE_FILE, Run, environment, load_run, new_run_dir, standalone_config, write_run_files
from .tracking import check_tracking, start_tracking, summary_metrics
from .transforms import Preprocess
from .utils import atomic_write_json

if TYPE_CHECKING:
    from .evaluation import EvalResult
    from .inference.archive import ArchiveSummary

log = logging.getLogger("medcls")


def as_config(config: Config | str | Path | dict | None, overrides: Sequence[str] | None) -> Config:
    if isinstance(config, Config):
        return build_config(config.to_dict(), list(overrides or [])) if overrides else config
    if isinstance(config, dict):
        return build_config(config, list(overrides or []))
    return load_config(config, list(overrides or []))


def _resume_config(resume: str | Path, config, overrides: Sequence[str] | None) -> tuple[Run, Config]:
    prev = load_run(resume)
    bad = [o for o in (overrides or []) if not o.startswith("train.")]
    if bad or config is not None:
        raise ConfigError(f"--resume continues {resume} with its saved config; only train.* overrides are allowed, "
                          f"got {bad or config}")
    if not prev.checkpoint_path("last").is_file():
        raise RunError(f"{resume} has no last checkpoint to resume from")
    return prev, build_config(prev.config.to_dict(), list(overrides or []))


def _setup_device(cfg: Config):
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    return device, dist


def _prepare(cfg: Config, data: LoadedData, prev: Run | None) -> tuple[Config, ModelSpec, dict[str, Any], Any]:
    """Resolve autos (a resume's train.* overrides may say auto too), fit the metadata/text encoding on train and
    write down the ModelSpec (new runs)."""
    from .defaults import resolve_auto

    cfg, chosen = resolve_auto(cfg, data)
    if prev is None:
        cfg = standalone_config(cfg)
        inputs = None
        if cfg.model.fusion != "none":  # metadata/text: fitted on the training split only
            from .multimodal import InputEncoder

            inputs = InputEncoder.fit(cfg.inputs, data.train)
        spec = ModelSpec.for_config(cfg, data.spec, inputs)
    else:
        spec, inputs, chosen = prev.model_spec, prev.inputs, {**prev.data_summary.get("auto", {}), **chosen}
    summary = {"splits": data.summary(), "notes": data.notes, "source": cfg.data.source}
    if chosen:
        summary["auto"] = chosen
    return cfg, spec, summary, inputs


def _build(cfg: Config, spec: ModelSpec, prev: Run | None):
    torch.manual_seed(cfg.seed)
    if prev is not None:  # resume: the weights come from the last checkpoint
        return spec.build(text_source=str(prev.artefact.text_dir) if spec.uses_text else None,
                          modality_dropout=cfg.train.modality_dropout)
    return spec.build(pretrained=cfg.model.pretrained, weights=cfg.model.weights, text_source=cfg.inputs.text_encoder,
                      pretrained_text=True, modality_dropout=cfg.train.modality_dropout)


def _start_run(path: Path, cfg: Config, spec: ModelSpec, summary: dict, model, inputs, device, dist,
               resumed: bool) -> None:
    write_run_files(path, cfg, spec, summary)
    if spec.uses_text and not resumed:  # tokenizer files + the encoder's config; its weights are in the checkpoints
        from .multimodal.text import save_text_files

        save_text_files(inputs.tokenizer, model.text_model.config, path / TEXT_DIR)
    atomic_write_json(path / ("env.resume.json" if resumed else "env.json"), environment(str(device), dist.world_size))
    log.info("run directory: %s", path)
    for s, v in summary["splits"].items():
        log.info("%-5s %5d images  %s", s, v["n"], v["per_class"])


LEAKAGE_SAMPLE = 20_000  # data.leakage_check=auto decodes at most this many images (sampled evenly per split)


def _check_splits(path: Path, cfg: Config, data: LoadedData) -> None:
    """Check the run's own splits for shared images and patients; ``leakage.json`` (report and model card state
    it). Validation shared with train makes the checkpoint, calibration and thresholds chosen on it optimistic."""
    if cfg.data.leakage_check == "off":
        return
    from .data.check import check_tables

    tables = {"train": data.train, "val": data.val, "test": data.test}
    report = check_tables(data.spec, tables, source=cfg.data.source, options=dict(cfg.data.options),
                          max_images=LEAKAGE_SAMPLE if cfg.data.leakage_check == "auto" else None)
    atomic_write_json(path / LEAKAGE_FILE, report.split_summary())
    for reason in report.leakage_reasons:
        where = "validation" if reason.startswith("train/val") else "test"
        log.warning("the run's splits share data: %s; %s metrics (and what was chosen on them) are optimistic",
                    reason, where)


def train(config: Config | str | Path | dict | None = None, *, overrides: Sequence[str] | None = None,
          run_dir: str | Path | None = None, resume: str | Path | None = None,
          callbacks: Sequence[Callback] = (), evaluate_split: str | bool | None = None,
          data: LoadedData | None = None) -> Run:
    """Train a model and return its :class:`~medcls.runs.Run` (best and last checkpoints calibrated on val).

    ``config`` is a :class:`Config`, a YAML path, a dict or None (defaults);
    ``overrides`` are ``a.b=value`` strings. ``resume`` continues an existing
    run from its ``last`` checkpoint (only ``train.*`` overrides such as a larger
    ``train.epochs`` are allowed then). ``evaluate_split`` evaluates the best
    checkpoint on that split afterwards (True: the config's ``eval.split``), before the run's tracking ends, so
    the tracked run gets the report, plots and model card. ``data`` trains on these splits instead of
    loading ``cfg.data`` (cross-validation folds, tuning without the test split).
    """
    ensure_console_logging()
    prev, cfg = _resume_config(resume, config, overrides) if resume is not None else (None, as_config(config, overrides))
    check_tracking(cfg)
    device, dist = _setup_device(cfg)
    tracker = None
    try:
        data = load_data(cfg.data) if data is None else data
        if cfg.eval.subgroups:  # a column that is not there fails now, not after training
            from .evaluation.subgroups import subgroup_labels

            subgroup_labels(data.test.meta, cfg.eval.subgroups)
        cfg, spec, summary, inputs = _prepare(cfg, data, prev)
        model = _build(cfg, spec, prev)
        path = _run_path(cfg, prev, run_dir, dist)
        if dist.is_main:
            _start_run(path, cfg, spec, summary, model, inputs, device, dist, resumed=prev is not None)
            if prev is None:
                _check_splits(path, cfg, data)
            tracker = start_tracking(cfg, path)
        trainer = Trainer(cfg, data, model, Preprocess(spec.preprocess), path, device=device, dist=dist,
                          callbacks=[*callbacks, *([tracker] if tracker is not None else [])], inputs=inputs)
        if prev is not None:
            trainer.resume(path / "checkpoints" / "last.safetensors")
        _fit(trainer, tracker, path)
    finally:
        cleanup(dist)
    run = load_run(path)
    if dist.is_main:
        _calibrate_and_evaluate(run, data, device, evaluate_split, tracker)
    return run


def _run_path(cfg: Config, prev: Run | None, run_dir: str | Path | None, dist) -> Path:
    """The resumed run's folder, or a new one made by rank 0 and shared with the other ranks."""
    if prev is not None:
        return prev.path
    path = new_run_dir(cfg.output_dir, cfg.name, run_dir) if dist.is_main else None
    return Path(broadcast_object(str(path) if path else None, dist))


def _fit(trainer: Trainer, tracker, path: Path) -> None:
    """``trainer.fit()``; a failure or Ctrl-C marks the tracked run and says how to continue."""
    try:
        trainer.fit()
    except BaseException as e:
        if tracker is not None:
            tracker.abort(interrupted=isinstance(e, KeyboardInterrupt))
        if isinstance(e, KeyboardInterrupt):
            log.warning("interrupted: the last finished epoch is saved; continue with `medcls train --resume %s`",
                        path)
        raise


def _calibrate_and_evaluate(run: Run, data: LoadedData, device, evaluate_split: str | bool | None, tracker) -> None:
    """Calibrate both checkpoints on val, evaluate ``evaluate_split`` (if asked) and close the tracked run."""
    for which in CHECKPOINTS:
        calibrate(run, which, data=data, device=device)
    if evaluate_split:
        split = run.config.eval.split if evaluate_split is True else evaluate_split
        result = evaluate(run, split=split, data=data)
        if tracker is not None:
            tracker.log_summary(summary_metrics(result.metrics, split))
    if tracker is not None:
        tracker.finish(run.path)


def calibrate(run: Run | str | Path, checkpoint: str = "best", *, device: str | torch.device = "auto",
              data: LoadedData | None = None) -> Postprocess:
    """Fit ``checkpoint``'s temperature and operating points on the val split; stored in ``postprocess.json``.

    Training does this for ``best`` and ``last``; call it again after changing ``eval.operating_point``
    (``--set`` on the run's config.yaml) or to re-fit a checkpoint.
    """
    from .calibration import calibrate_run

    ensure_console_logging()
    run = run if isinstance(run, Run) else load_run(run)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return calibrate_run(run, checkpoint, data=data, device=dev)


def evaluate(run: Run | str | Path, split: str = "test", *, checkpoint: str = "best", device: str = "auto",
             data: LoadedData | None = None, out_dir: str | Path | None = None, tta: bool | None = None) -> EvalResult:
    """Evaluate a run's checkpoint on ``split``; writes ``eval-<split>/`` and returns an
    :class:`~medcls.evaluation.EvalResult`: the metrics (``result["auc"]``) and the cases behind them
    (``result.ids``, ``.labels``, ``.probs``, ``.frame()``).

    ``tta=True`` also reports test-time augmentation (overrides the run's ``eval.tta``).
    """
    from .evaluation import evaluate_run

    ensure_console_logging()
    run = run if isinstance(run, Run) else load_run(run)
    if tta is not None and tta != run.config.eval.tta:
        run = run.with_config(run.config.model_copy(update={"eval": run.config.eval.model_copy(update={"tta": tta})}))
    return evaluate_run(run, split, checkpoint=checkpoint, device=resolve_device(device), data=data, out_dir=out_dir)


def predict(source: Run | str | Path, images: Sequence[Any], *, checkpoint: str = "best", device: str = "auto",
            backend: str = "torch", metadata: Sequence[dict[str, Any] | None] | None = None,
            text: Sequence[str | None] | None = None, on_error: str = "raise",
            refuse_ood: bool = False) -> list[dict[str, Any]]:
    """Calibrated class probabilities and decisions for image files, bytes or arrays.

    ``source`` is a run (directory) or an exported bundle; preprocessing and post-processing come
    from it. Fused models also take ``metadata`` and ``text`` (one entry per image; None = unknown).
    ``on_error="skip"``: an unreadable image gives ``{"file", "error": {"message"}}`` and the rest
    are predicted (default ``"raise"``). Every result has ``ood``: the bundle's out-of-distribution check;
    ``refuse_ood=True`` treats a flagged image as an error instead of answering it.
    """
    from .inference import Predictor

    path = source.path if isinstance(source, Run) else source
    pred = Predictor.load(path, backend=backend, checkpoint=checkpoint, device=resolve_device(device),
                          refuse_ood=refuse_ood)
    return pred.predict(images, metadata=metadata, text=text, on_error=on_error)


def predict_archive(source: Run | str | Path, inputs: Sequence[str | Path] = (), *, output: str | Path | None = None,
                    list_file: str | Path | None = None, split: str = "all", format: str = "csv",
                    shard_size: int | None = None, checkpoint: str = "best", device: str = "auto",
                    backend: str = "auto", metadata: dict[str, Any] | None = None, refuse_ood: bool = False,
                    batch_size: int = 64, num_workers: int | None = None, progress: bool = False,
                    on_results: Callable[[list[dict[str, Any]]], None] | None = None,
                    on_error: Callable[[str], None] | None = None) -> ArchiveSummary:
    """Predict an archive of any size, streaming: files, folders (recursive, sorted), a list file (one path a
    line, relative to the file's folder) and data sources (``hdf5:PATH``, ``folder:PATH`` ...; ``split``: all
    or one of train/val/test), decoded in ``num_workers`` DataLoader processes, ``batch_size`` at a time.

    With ``output``: ``output/shards/part-*.csv`` of ``shard_size`` inputs each and, when all are done,
    ``output/predictions.csv`` (or ``.parquet``) in input order and ``output/errors.csv``; the same call after
    an interruption predicts only the missing shards, and under torchrun the ranks share the shards. Without
    it each batch's result dicts go to ``on_results``. ``on_error`` gets one ``<file>: <message>`` line per
    input that cannot be predicted. Nothing holds more than a shard (a batch without ``output``) of results.
    """
    from .inference.archive import DEFAULT_SHARD_SIZE, ArchiveSummary, check_options
    from .inference.batch import batch_ranges, default_workers, error_line, resolve_inputs, stream

    path = source.path if isinstance(source, Run) else Path(source)
    check_options(format, DEFAULT_SHARD_SIZE if shard_size is None else shard_size)
    items = resolve_inputs(inputs, list_file=list_file, split=split)
    workers = default_workers() if num_workers is None else num_workers
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"--batch-size must be at least 1 and --num-workers at least 0, got {batch_size}, {workers}")
    if output is not None:
        return _predict_to_folder(path, items, Path(output), format=format, checkpoint=checkpoint, device=device,
                                  shard_size=DEFAULT_SHARD_SIZE if shard_size is None else shard_size,
                                  backend=backend, metadata=metadata, refuse_ood=refuse_ood, batch_size=batch_size,
                                  num_workers=workers, progress=progress, on_error=on_error)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("under torchrun, give --output DIR: the ranks share its shards")
    pred = _load_predictor(path, backend, checkpoint, device, refuse_ood, DistInfo())
    summary = ArchiveSummary(inputs=len(items))
    with _bar(progress, len(items)) as bar:
        for idx, results in stream(pred, items, batch_ranges(0, len(items), batch_size), num_workers=workers,
                                   metadata=metadata):
            bar.update(len(idx))
            good = [r for r in results if "error" not in r]
            summary.predicted, summary.errors = summary.predicted + len(good), summary.errors + len(results) - len(good)
            for r in results:
                if "error" in r and on_error is not None:
                    on_error(error_line(r))
            if on_results is not None:
                on_results(good)
    return summary


def _load_predictor(path: Path, backend: str, checkpoint: str, device: str, refuse_ood: bool, dist: DistInfo):
    """The Predictor on ``device`` (under torchrun on CUDA: this rank's GPU, LOCAL_RANK)."""
    from .inference import Predictor

    dev = resolve_device(device)
    if dist.enabled and dev.type == "cuda":
        dev = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(dev)
    return Predictor.load(path, backend=backend, checkpoint=checkpoint, device=dev, refuse_ood=refuse_ood)


def _bar(progress: bool, total: int):
    """A progress bar on stderr (files/s, ETA); a silent one when ``progress`` is off."""
    from tqdm import tqdm

    return tqdm(total=total, disable=not progress, file=sys.stderr, unit="file", dynamic_ncols=True, smoothing=0.05)


def _predict_to_folder(path: Path, items, out: Path, *, format: str, shard_size: int, checkpoint: str, device: str,
                       backend: str, metadata: dict[str, Any] | None, refuse_ood: bool, batch_size: int,
                       num_workers: int, progress: bool, on_error: Callable[[str], None] | None) -> ArchiveSummary:
    """The shards this rank owns that are missing, then (rank 0, once every shard is there) the final files."""
    from .inference.archive import (
        ArchiveSummary,
        ShardPlan,
        new_manifest,
        open_output_on_all_ranks,
        predict_shards,
        shard_path,
        source_identity,
    )

    plan = ShardPlan(len(items), shard_size)
    manifest = new_manifest(items, shard_size, source_identity(path, checkpoint, backend), path, format,
                            refuse_ood=refuse_ood, metadata=metadata, batch_size=batch_size,
                            model_threads="one per worker" if num_workers else "all")
    dist = init_distributed("cpu")  # gloo, only to agree on the folder: the work is shared through its files
    try:
        manifest = open_output_on_all_ranks(out, manifest, dist)
    finally:
        cleanup(dist)
    summary = ArchiveSummary(inputs=len(items), shards=plan.count, output=out)
    mine = plan.of_rank(dist.rank, dist.world_size)
    todo = [k for k in mine if not shard_path(out, k).is_file()]
    summary.shards_skipped = len(mine) - len(todo)
    if todo:
        pred = _load_predictor(path, backend, checkpoint, device, refuse_ood, dist)
        with _bar(progress and dist.is_main, sum(plan.rows(k) for k in todo)) as bar:
            for k, counts in predict_shards(pred, items, plan, out, todo, batch_size=batch_size,
                                            num_workers=num_workers, metadata=metadata, bar=bar, report=on_error):
                summary.shards_written += 1
                summary.predicted, summary.errors = summary.predicted + counts["rows"], summary.errors + counts["errors"]
                if dist.is_main:
                    manifest = _record_shard(out, manifest, k, counts)
    if dist.is_main:
        _finish(out, plan, manifest, summary, fresh=bool(todo))
    return summary


def _record_shard(out: Path, manifest: dict[str, Any], k: int, counts: dict[str, int]) -> dict[str, Any]:
    from .inference.archive import MANIFEST, with_shard

    manifest = with_shard(manifest, k, counts)
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _finish(out: Path, plan, manifest: dict[str, Any], summary: ArchiveSummary, *, fresh: bool) -> None:
    """Rank 0: wait for the other ranks' shards, merge them into the final files and mark the manifest
    complete; nothing to write when a finished job is run again."""
    from .inference.archive import ERRORS, MANIFEST, merge, wait_for_shards

    final = out / manifest["final"]
    if manifest.get("complete") and not fresh and final.is_file() and (out / ERRORS).is_file():
        summary.already_complete = True
    else:
        wait_for_shards(out, plan)
        manifest = {**manifest, "shards": merge(out, plan, manifest["job"]["format"]), "complete": True}
        atomic_write_json(out / MANIFEST, manifest)
    summary.predicted = sum(c["rows"] for c in manifest["shards"].values())
    summary.errors = sum(c["errors"] for c in manifest["shards"].values())
    summary.final, summary.errors_file = final, out / ERRORS


def validate(model: Run | str | Path, source: str, *, label_map: str | Path | dict | None = None,
             site_column: str | None = None, split: str = "all", options: dict[str, Any] | None = None,
             data_dir: str | None = None, checkpoint: str = "best", backend: str = "auto", device: str = "auto",
             n_bootstrap: int = 1000, seed: int = 0, recalibrate: str | None = None, fit_fraction: float = 0.5,
             internal: str | Path | None = None, name: str | None = None, out_dir: str | Path | None = None,
             batch_size: int = 64, num_workers: int = 0, write: bool = True):
    """External validation of a run or bundle on a labelled ``source`` it never saw (``kind:argument``, with the
    source's ``options``; ``split``: all or one of its splits), through the same Predictor as ``predict``.

    Site labels are matched to the model's classes by name, or by ``label_map`` (a YAML file or a dict: site
    label -> model class, ``None`` to drop). ``site_column``: per-site figures. ``recalibrate`` (intercept |
    logistic | temperature) is fitted on ``fit_fraction`` of the cases (drawn with ``seed``) and reported on the
    rest. Writes ``validate-<name>/`` (in the run directory, else ``out_dir`` or the working directory; never
    overwritten) unless ``write=False``; returns a :class:`~medcls.validation.Validation`.
    """
    from .validation import default_name, output_dir, validate_model, write_validation

    ensure_console_logging()
    path = model.path if isinstance(model, Run) else Path(model)
    if write and name is not None:  # a folder that exists is refused before the work, not after
        from .utils import check_new_output

        check_new_output(output_dir(path, name, out_dir), "validations", hint="choose another --name or --output-dir")
    result = validate_model(path, source, label_map=label_map, site_column=site_column, split=split,
                            options=options, data_dir=data_dir, checkpoint=checkpoint, backend=backend,
                            device=resolve_device(device), n_bootstrap=n_bootstrap, seed=seed,
                            recalibrate=recalibrate, fit_fraction=fit_fraction, internal=internal,
                            batch_size=batch_size, num_workers=num_workers)
    if write:
        out = output_dir(path, name or default_name(result.metrics["source"]["name"]), out_dir)
        write_validation(result, out)
        log.debug("external validation written to %s", out)  # the CLI says it after its tables
    return result
