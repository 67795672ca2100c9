"""Evaluate a run on a split: metrics.json, predictions.csv and plots under ``eval-<split>/``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..data.sources import LoadedData, load_data
from ..engine.loader import Batches
from ..engine.predict import predict_logits, probabilities
from ..metrics import compute_metrics
from ..runs import Run
from ..utils import atomic_write_json, atomic_write_text

log = logging.getLogger("medcls")

HEADLINE = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1")


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The summary numbers shown in tables (those present for the task)."""
    return {k: metrics[k] for k in HEADLINE if isinstance(metrics.get(k), int | float)}


def predictions_frame(ids: list[str], labels: np.ndarray, probs: np.ndarray, class_names: list[str], task: str,
                      threshold: float, positive_index: int | None) -> pd.DataFrame:
    df = pd.DataFrame({"id": ids})
    if task == "multilabel":
        for j, c in enumerate(class_names):
            df[f"true_{c}"] = labels[:, j].astype(int)
        for j, c in enumerate(class_names):
            df[f"prob_{c}"] = probs[:, j]
            df[f"pred_{c}"] = (probs[:, j] >= threshold).astype(int)
        return df
    df["label"] = [class_names[i] for i in labels]
    for j, c in enumerate(class_names):
        df[f"prob_{c}"] = probs[:, j]
    if task == "binary":
        pos, neg = positive_index, 1 - positive_index
        pred = np.where(probs[:, pos] >= threshold, pos, neg)
    else:
        pred = probs.argmax(1)
    df["predicted"] = [class_names[i] for i in pred]
    df["correct"] = df["predicted"] == df["label"]
    return df


def evaluate_run(run: Run, split: str = "test", *, checkpoint: str = "best", device: torch.device | None = None,
                 data: LoadedData | None = None, out_dir: str | Path | None = None) -> dict[str, Any]:
    from .plots import plot_confusion, plot_history, plot_pr, plot_roc

    device = device or torch.device("cpu")
    cfg, spec = run.config, run.spec
    data = data or load_data(cfg.data)
    table = data.split(split)
    model, meta = run.build_model(checkpoint, device=str(device))
    batches = Batches(table, run.preprocess, batch_size=cfg.eval.batch_size, cache="off",
                      num_workers=cfg.data.num_workers)
    logits = predict_logits(model, batches, device)
    probs = probabilities(logits, spec.task)
    labels = np.asarray(table.labels)
    names = list(spec.class_names)
    thr = cfg.eval.threshold
    metrics = compute_metrics(spec.task, labels, probs, class_names=names, positive_index=spec.positive_index,
                              threshold=thr)
    metrics = {"split": split, "checkpoint": checkpoint, "checkpoint_epoch": meta.get("epoch"), "n": len(labels), **metrics}
    out = Path(out_dir) if out_dir else run.path / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics)
    df = predictions_frame(table.ids, labels, probs, names, spec.task, thr, spec.positive_index)
    atomic_write_text(out / "predictions.csv", df.to_csv(index=False))
    plot_roc(out / "roc.png", labels, probs, task=spec.task, class_names=names, positive_index=spec.positive_index)
    plot_pr(out / "pr.png", labels, probs, task=spec.task, class_names=names, positive_index=spec.positive_index)
    if "confusion_matrix" in metrics:
        plot_confusion(out / "confusion.png", np.asarray(metrics["confusion_matrix"]), names)
    hist = run.path / "history.csv"
    if hist.is_file():
        plot_history(out / "history.png", pd.read_csv(hist).to_dict("records"))
    summary_path = run.path / "metrics.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.setdefault("eval", {})[split] = {**headline(metrics), "n": len(labels), "checkpoint": checkpoint}
    atomic_write_json(summary_path, summary)
    log.info("evaluation on %s written to %s", split, out)
    return metrics
