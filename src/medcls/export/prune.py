"""Prune a run's model for export: channel pruning, a short fine-tune, calibration re-fitted on val.

``export_bundle(run, out, prune=0.5)`` calls :func:`prune_for_export` before writing the bundle:

1. remove ``ratio`` of the channels of every prunable layer group (torch-pruning,
   :func:`medcls.models.pruning.prune_channels`; the classifier head keeps its outputs);
2. fine-tune ``epochs`` epochs with the run's own trainer, training split, preprocessing and
   augmentation (stored config; cosine schedule at a fraction of the run's learning rate),
   keeping the weights of the best validation epoch;
3. re-fit temperature and operating points on val (the old ones belong to another model).

The pruned architecture travels in the ModelSpec (``pruning``: ratio and torch-pruning's
history), so the one artefact loader rebuilds it for the torch backend.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artefact import ModelSpec, Postprocess
from ..errors import ConfigError, ModelError
from ..metrics import compute_metrics
from ..models.pruning import METHOD, check_ratio, count_parameters, prune_channels, torch_pruning
from ..runs import Run

log = logging.getLogger("medcls")

LR_SCALE = 0.25  # fine-tune at a quarter of the run's learning rate: the weights start near a good solution


@dataclass
class Pruned:
    """The pruned, fine-tuned model with the spec that rebuilds it, its re-fitted calibration and a report."""

    model: nn.Module
    spec: ModelSpec
    postprocess: Postprocess
    report: dict[str, Any]


def check_prune_request(spec: ModelSpec, ratio: Any, epochs: Any) -> tuple[float, int]:
    """``(ratio, epochs)`` validated: one line for a bad ratio, a negative epoch count, an already pruned
    or a fused model, or torch-pruning missing."""
    if spec.pruning is not None:
        raise ModelError(f"this model is already pruned (ratio {spec.pruning.get('ratio')}); prune its source "
                         "run instead, with the total ratio you want")
    r = check_ratio(ratio)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ConfigError(f"--prune-epochs must be a whole number >= 0, got {epochs!r}")
    if spec.fused:
        raise ModelError("pruning is for image-only models; fused (image + metadata/text) models are exported "
                         "unpruned")
    torch_pruning()
    return r, epochs


def _val_auc(run: Run, model: nn.Module, data, device: torch.device) -> tuple[float, np.ndarray]:
    from ..calibration import split_logits

    logits = split_logits(run, model, data.val, device, where="val split")
    spec = run.dataset
    m = compute_metrics(spec.task, np.asarray(data.val.labels), Postprocess().probabilities(logits, spec.task),
                        class_names=list(spec.class_names), positive_index=spec.positive_index)
    return float(m["auc"]), logits


def _fine_tune(run: Run, model: nn.Module, data, epochs: int, lr_scale: float,
               device: torch.device) -> dict[str, Any]:
    """``epochs`` epochs of the run's own training recipe on ``model``; loads the best val epoch's weights.

    Without weight EMA: over a few hundred steps an average at the recipe's decay would still be mostly
    the un-tuned pruned weights (0.99 ** 111 = 0.33 after 3 epochs of PneumoniaMNIST).
    """
    from ..engine.checkpoint import load_checkpoint, split_prefix
    from ..engine.trainer import Trainer

    t = run.config.train
    train = t.model_copy(update={"epochs": epochs, "lr": t.lr * lr_scale, "scheduler": "cosine",
                                 "warmup_epochs": min(0.2, float(epochs)), "head_only_epochs": 0,
                                 "early_stopping_patience": None, "ema": False})
    cfg = run.config.model_copy(update={"train": train,
                                        "model": run.config.model.model_copy(update={"freeze_backbone": False})})
    with tempfile.TemporaryDirectory(prefix="medcls-prune-") as tmp:
        trainer = Trainer(cfg, data, model, run.preprocess, tmp, device=device)
        summary = trainer.fit()
        best, _ = load_checkpoint(f"{tmp}/checkpoints/best.safetensors", device="cpu")
    model.load_state_dict(split_prefix(best, "model/"))
    return {"epochs": epochs, "lr": train.lr, "scheduler": "cosine", "best_epoch": summary["best_epoch"],
            "monitor": summary["monitor"], "seconds": round(summary["train_seconds"], 1)}


def _refit(run: Run, logits: np.ndarray, data, ratio: float, checkpoint: str, epoch: Any) -> Postprocess:
    from ..artefact import fit_postprocess

    ev, spec = run.config.eval, run.dataset
    post = fit_postprocess(spec.task, logits, np.asarray(data.val.labels), positive_index=spec.positive_index,
                           operating_point=ev.operating_point, target_sensitivity=ev.target_sensitivity,
                           target_specificity=ev.target_specificity, calibrate=ev.calibrate,
                           class_names=list(spec.class_names))
    post.checkpoint = {"name": checkpoint, "epoch": epoch, "pruned": ratio}
    post.notes = [*post.notes, f"fitted on val after pruning {ratio:.0%} of the channels and fine-tuning"]
    return post


def _tune_or_keep(run: Run, model: nn.Module, data, epochs: int, lr_scale: float, auc_pruned: float,
                  logits: np.ndarray) -> tuple[dict[str, Any], float, np.ndarray]:
    """Fine-tune ``model`` in place; keep the untuned weights if val AUC fell (val selection, like the trainer's
    best epoch, with "no fine-tune" a candidate). Returns the fine-tune report, val AUC and val logits."""
    from ..engine.trainer import resolve_device

    cpu = torch.device("cpu")
    untuned = {k: v.clone() for k, v in model.state_dict().items()}
    tune = _fine_tune(run, model, data, epochs, lr_scale, resolve_device(run.config.train.device))
    model.to(cpu).to(memory_format=torch.contiguous_format).eval()
    tuned_auc, tuned_logits = _val_auc(run, model, data, cpu)
    if tuned_auc < auc_pruned:
        model.load_state_dict(untuned)
        tune["kept"] = f"the pruned weights before fine-tuning (val AUC {tuned_auc:.4f} after it)"
        return tune, auc_pruned, logits
    return tune, tuned_auc, tuned_logits


def prune_for_export(run: Run, model: nn.Module, data, *, ratio: float, epochs: int, checkpoint: str = "best",
                     epoch: Any = None, lr_scale: float = LR_SCALE) -> Pruned:
    """Prune ``model`` (``run``'s ``checkpoint``, on the CPU) by ``ratio``, fine-tune, re-calibrate."""
    ratio, epochs = check_prune_request(run.model_spec, ratio, epochs)
    cpu = torch.device("cpu")
    before, auc_before = count_parameters(model), _val_auc(run, model, data, cpu)[0]
    pre = run.preprocess_cfg
    history = prune_channels(model, ratio, in_chans=pre.in_chans, size=pre.size)
    after = count_parameters(model)
    auc_pruned, logits = _val_auc(run, model, data, cpu)
    log.info("pruned %.0f%% of the channels: %d -> %d parameters; val AUC %.4f -> %.4f before fine-tuning",
             100 * ratio, before, after, auc_before, auc_pruned)
    tune, auc_after = None, auc_pruned
    if epochs:
        tune, auc_after, logits = _tune_or_keep(run, model, data, epochs, lr_scale, auc_pruned, logits)
    spec = run.model_spec.with_(pruning={"ratio": ratio, "method": METHOD, "library": f"torch-pruning "
                                         f"{metadata.version('torch-pruning')}", "history": history})
    report = {"ratio": ratio, "method": METHOD, "params_before": before, "params_after": after,
              "fine_tune_epochs": epochs, "fine_tune": tune, "val_auc_before": auc_before,
              "val_auc_pruned_before_fine_tune": auc_pruned, "val_auc_after": auc_after}
    return Pruned(model, spec, _refit(run, logits, data, ratio, checkpoint, epoch), report)
