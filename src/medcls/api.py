"""Python API: ``train``, ``evaluate``, ``predict`` (the CLI is a thin layer over these)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import Config, build_config, load_config
from .data.sources import LoadedData, load_data
from .engine.distributed import broadcast_object, cleanup, init_distributed
from .engine.trainer import Callback, Trainer, resolve_device
from .errors import ConfigError, ModelError, RunError
from .models import create_model
from .models.factory import default_input_size
from .runs import Run, environment, load_run, new_run_dir, write_run_files
from .transforms import Preprocess, PreprocessConfig
from .utils import atomic_write_json

log = logging.getLogger("medcls")


def resolve_preprocess(cfg: Config, data: LoadedData) -> PreprocessConfig:
    t = cfg.transforms
    native = data.spec.native_size
    size = t.image_size or (native if native and native <= 64 else default_input_size(cfg.model.name))
    in_chans = cfg.model.in_chans or data.spec.channels
    from .transforms.stain import resolve_stain  # fits the reference once; the run keeps the parameters

    stain = resolve_stain(t.stain, t.stain_reference, channels=data.spec.channels, dataset=data.spec.name)
    return PreprocessConfig(size=size, in_chans=in_chans, clahe=t.clahe, clahe_clip=t.clahe_clip,
                            stain=t.stain, stain_params=stain)


def build_model(cfg: Config, data: LoadedData, pre: PreprocessConfig, *, inputs=None, text_source=None,
                pretrained_text: bool = True):
    """The image model, or (``inputs``: a fitted InputEncoder) the image model fused with metadata/text."""
    model, stem = _build_image_model(cfg, data, pre)
    if inputs is not None:
        from .multimodal import build_fused, fusion_options

        model = build_fused(model, data.spec.num_classes, fusion_options(cfg, inputs),
                            text_source=text_source or cfg.inputs.text_encoder, pretrained_text=pretrained_text,
                            modality_dropout=cfg.train.modality_dropout)
    return model, stem


def _build_image_model(cfg: Config, data: LoadedData, pre: PreprocessConfig):
    m = cfg.model
    kwargs = dict(in_chans=pre.in_chans, pretrained=m.pretrained, weights=m.weights, drop_rate=m.drop_rate)
    if m.stem != "auto":
        return create_model(m.name, data.spec.num_classes, stem=m.stem, **kwargs), m.stem
    if pre.size <= 64:
        try:
            return create_model(m.name, data.spec.num_classes, stem="small", **kwargs), "small"
        except ModelError:  # not a ResNet: keep its own stem
            pass
    return create_model(m.name, data.spec.num_classes, **kwargs), "default"


def _as_config(config: Config | str | Path | dict | None, overrides: Sequence[str] | None) -> Config:
    if isinstance(config, Config):
        return build_config(config.to_dict(), list(overrides or [])) if overrides else config
    if isinstance(config, dict):
        return build_config(config, list(overrides or []))
    return load_config(config, list(overrides or []))


def train(config: Config | str | Path | dict | None = None, *, overrides: Sequence[str] | None = None,
          run_dir: str | Path | None = None, resume: str | Path | None = None,
          callbacks: Sequence[Callback] = (), evaluate_split: str | None = None,
          data: LoadedData | None = None) -> Run:
    """Train a model and return its :class:`~medcls.runs.Run`.

    ``config`` is a :class:`Config`, a YAML path, a dict or None (defaults);
    ``overrides`` are ``a.b=value`` strings. ``resume`` continues an existing
    run from its ``last`` checkpoint (only ``train.*`` overrides such as a larger
    ``train.epochs`` are allowed then). ``evaluate_split`` evaluates the best
    checkpoint on that split afterwards. ``data`` trains on these splits instead of
    loading ``cfg.data`` (cross-validation folds, tuning without the test split).
    """
    if resume is not None:
        prev = load_run(resume)
        bad = [o for o in (overrides or []) if not o.startswith("train.")]
        if bad or config is not None:
            raise ConfigError(f"--resume continues {resume} with its saved config; only train.* overrides are allowed, got {bad or config}")
        cfg = build_config(prev.config.to_dict(), list(overrides or []))
        last = prev.checkpoint_path("last")
        if not last.is_file():
            raise RunError(f"{resume} has no last checkpoint to resume from")
    else:
        cfg = _as_config(config, overrides)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    try:
        data = load_data(cfg.data) if data is None else data
        if resume is None:
            from .defaults import resolve_auto

            cfg, chosen = resolve_auto(cfg, data)
        pre = prev.preprocess_cfg if resume is not None else resolve_preprocess(cfg, data)
        inputs = None
        if cfg.model.fusion != "none":  # metadata/text: fitted on the training split only
            from .multimodal import InputEncoder

            inputs = prev.inputs if resume is not None else InputEncoder.fit(cfg.inputs, data.train)
        torch.manual_seed(cfg.seed)
        model, stem = build_model(cfg, data, pre, inputs=inputs,
                                  text_source=(prev.path / "text_encoder") if resume is not None else None,
                                  pretrained_text=resume is None)
        if resume is not None:
            path = Path(resume)
        else:
            path = new_run_dir(cfg.output_dir, cfg.name, run_dir) if dist.is_main else None
            path = Path(broadcast_object(str(path) if path else None, dist))
        summary = {"splits": data.summary(), "notes": data.notes, "stem": stem, "source": cfg.data.source}
        if resume is None and chosen:
            summary["auto"] = chosen
        if inputs is not None:
            summary["inputs"] = inputs.to_dict()
        if dist.is_main:
            write_run_files(path, cfg, data.spec, pre, summary)
            if inputs is not None and inputs.text and resume is None:
                from .multimodal.text import save_text_files

                save_text_files(inputs.tokenizer, model.text_model.config, path / "text_encoder")
            atomic_write_json(path / ("env.json" if resume is None else "env.resume.json"),
                              environment(str(device), dist.world_size))
            log.info("run directory: %s", path)
            for s, v in summary["splits"].items():
                log.info("%-5s %5d images  %s", s, v["n"], v["per_class"])
        trainer = Trainer(cfg, data, model, Preprocess(pre), path, device=device, dist=dist, callbacks=callbacks,
                          inputs=inputs)
        if resume is not None:
            trainer.resume(path / "checkpoints" / "last.safetensors")
        try:
            trainer.fit()
        except KeyboardInterrupt:
            log.warning("interrupted: the last finished epoch is saved; continue with `medcls train --resume %s`", path)
            raise
    finally:
        cleanup(dist)
    run = load_run(path)
    if evaluate_split and dist.is_main:
        evaluate(run, split=evaluate_split, data=data)
    return run


def evaluate(run: Run | str | Path, split: str = "test", *, checkpoint: str = "best", device: str = "auto",
             data: LoadedData | None = None, out_dir: str | Path | None = None, tta: bool | None = None) -> dict[str, Any]:
    """Evaluate a run's checkpoint on ``split``; writes ``eval-<split>/`` and returns the metrics.

    ``tta=True`` also reports test-time augmentation (overrides the run's ``eval.tta``).
    """
    from .evaluation import evaluate_run

    run = run if isinstance(run, Run) else load_run(run)
    if tta is not None and tta != run.config.eval.tta:
        cfg = run.config.model_copy(update={"eval": run.config.eval.model_copy(update={"tta": tta})})
        run = Run(run.path, cfg, run.spec, run.preprocess_cfg, run.data_summary)
    return evaluate_run(run, split, checkpoint=checkpoint, device=resolve_device(device), data=data, out_dir=out_dir)


def predict(source: Run | str | Path, images: Sequence[Any], *, checkpoint: str = "best", device: str = "auto",
            backend: str = "torch", metadata: Sequence[dict[str, Any] | None] | None = None,
            text: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
    """Calibrated class probabilities and decisions for image files, bytes or arrays.

    ``source`` is a run (directory) or an exported bundle; preprocessing comes from it.
    Fused models also take ``metadata`` and ``text`` (one entry per image; None = unknown).
    """
    from .inference import Predictor

    dev = resolve_device(device)
    if isinstance(source, Run):
        pred = Predictor.from_run(source, checkpoint=checkpoint, device=dev)
    else:
        pred = Predictor.load(source, backend=backend, checkpoint=checkpoint, device=dev)
    if metadata is None and text is None:
        return pred.predict(images)
    return pred.predict(images, metadata=metadata, text=text)
