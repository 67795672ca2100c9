"""Evaluate a run on a split: metrics with CIs, operating points, calibration, predictions, plots.

Evaluation reads the temperature and operating points stored for the evaluated
checkpoint (``RUN_DIR/postprocess.json``, written by the calibration step on the
validation split, :mod:`medcls.calibration`); it never refits or overwrites them. A checkpoint
that was never calibrated is calibrated first, by that step.

Multilabel runs: ``metrics.json`` holds per-label AUC/AP (with DeLong CIs),
sensitivity/specificity/PPV/NPV/F1 at ``eval.threshold``, macro and micro AUC
(bootstrap CI of the macro AUC), the per-label operating points chosen on val and
applied here (``operating_points``, bootstrap CIs) and the metrics of the decision
in use (``decision``: each label at its own threshold). Labels with a single class
in the split are reported as ``nan``, left out of macro means and listed in
``skipped_labels``. ``predictions.csv`` has ``true_``/``prob_``/``pred_`` (at
``eval.threshold``) and ``decision_`` columns per label and a ``decision`` column
(findings joined by ``;``, or ``no finding``).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..artefact import Postprocess
from ..calibration import calibrate_run, split_logits
from ..data.sources import LoadedData, load_data
from ..metrics import (
    UndefinedMetricWarning,
    apply_thresholds,
    bootstrap_ci,
    calibration_report,
    compute_metrics,
    delong_auc_ci,
    net_benefit,
    roc_band,
    threshold_transfer,
)
from ..metrics.headline import HEADLINE_SUMMARY as HEADLINE
from ..metrics.operating_points import apply_label_thresholds, multilabel_decision_metrics
from ..runs import Run
from ..utils import atomic_write_json, atomic_write_text
from .result import EvalResult

log = logging.getLogger("medcls")


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The summary numbers shown in tables (those present for the task)."""
    return {k: metrics[k] for k in HEADLINE if isinstance(metrics.get(k), int | float)}


def _multilabel_details(metrics: dict[str, Any], labels: np.ndarray, probs: np.ndarray, post: dict[str, Any],
                       names: list[str], split: str, n_bootstrap: int, seed: int) -> list[str]:
    """Per-label DeLong AUC CIs, skipped labels, per-label operating points and the decision in use; notes."""
    skipped: dict[str, str] = {}
    for k, c in enumerate(names):
        n_pos = int(labels[:, k].sum())
        if 0 < n_pos < len(labels):
            metrics["per_class"][c]["auc_delong"] = delong_auc_ci(labels[:, k], probs[:, k])
        else:
            skipped[c] = (f"{n_pos} positive(s) and {len(labels) - n_pos} negative(s) on {split}: AUC/AP undefined "
                          "(nan), left out of the macro means")
    metrics["skipped_labels"] = skipped
    metrics["decision"] = {"operating_point": post["selected"], "rules": post["threshold_rules"],
                           **multilabel_decision_metrics(labels, probs, post["thresholds"], class_names=names)}
    if n_bootstrap:
        metrics["operating_points"] = {"selected": post["selected"],
                                       **apply_label_thresholds(labels, probs, post["operating_points"],
                                                                class_names=names, n_resamples=n_bootstrap, seed=seed)}
    return [f"label {c!r}: {r}" for c, r in skipped.items()]


def _postprocess(run: Run, checkpoint: str, data: LoadedData, device: torch.device, model) -> Postprocess:
    """The calibration stored for ``checkpoint``; fitted first (the calibration step) when there is none."""
    post = run.postprocess(checkpoint)
    if post is None:
        log.info("%s has no calibration for its %s checkpoint: fitting it on val first", run.path, checkpoint)
        val_logits = split_logits(run, model, data.val, device, where="val split")
        post = calibrate_run(run, checkpoint, data=data, device=device, val_logits=val_logits)
    return post


def _scores(task: str, labels: np.ndarray, probs: np.ndarray, names: list[str], pos, ev, seed: int) -> dict:
    """Headline metrics at ``eval.threshold`` with bootstrap CIs."""
    with warnings.catch_warnings():  # multilabel: labels with one class are recorded in skipped_labels instead
        if task == "multilabel":
            warnings.simplefilter("ignore", UndefinedMetricWarning)
        m = compute_metrics(task, labels, probs, class_names=names, positive_index=pos, threshold=ev.threshold)
        if ev.n_bootstrap:
            m["ci"] = bootstrap_ci(task, labels, probs, class_names=names, positive_index=pos,
                                   threshold=ev.threshold, n_resamples=ev.n_bootstrap, seed=seed)
    return m


def _binary_details(metrics: dict[str, Any], labels: np.ndarray, probs: np.ndarray, post: Postprocess, pos: int,
                   n_bootstrap: int, seed: int) -> None:
    y = labels == pos
    if y.any() and (~y).any():
        metrics["auc_delong"] = delong_auc_ci(y, probs[:, pos])
    if n_bootstrap and post.operating_points:
        metrics["operating_points"] = apply_thresholds(y, probs[:, pos], post.operating_points,
                                                       n_resamples=n_bootstrap, seed=seed)
        metrics["threshold_transfer"] = threshold_transfer(post.operating_points, metrics["operating_points"])
    metrics["decision_curve"] = net_benefit(y, probs[:, pos])
    if n_bootstrap and y.any() and (~y).any():
        metrics["roc_band"] = roc_band(y, probs[:, pos], n_resamples=min(n_bootstrap, 500), seed=seed)


def _postprocess_summary(post: Postprocess, split: str, eval_notes: list[str]) -> dict[str, Any]:
    d = post.to_dict()
    out = {k: d[k] for k in ("temperature", "calibrated", "fitted_on", "selected", "threshold", "thresholds",
                             "threshold_rules", "checkpoint") if d.get(k) is not None}
    out["notes"] = [*post.notes, *eval_notes]
    if split == "val":
        out["notes"].append("evaluated on the split the temperature and thresholds were fitted on: optimistic")
    return out


def _plots(out: Path, result: EvalResult, post: Postprocess, history: Path) -> None:
    from ..reports.plots import (
        history_rates,
        plot_confusion,
        plot_decision_curve,
        plot_history,
        plot_pr,
        plot_reliability,
        plot_roc,
    )

    metrics, labels, probs, names = result.metrics, result.labels, result.probs, list(result.class_names)
    task, pos = result.task, result.positive_index
    marks = None
    if task == "binary" and post.operating_points:
        marks = {k: v["threshold"] for k, v in post.operating_points.items() if isinstance(v, dict) and "threshold" in v}
    plot_roc(out / "roc.png", labels, probs, task=task, class_names=names, positive_index=pos, thresholds=marks,
             band=metrics.get("roc_band"))
    if "decision_curve" in metrics:
        plot_decision_curve(out / "decision_curve.png", metrics["decision_curve"], positive=names[pos],
                            thresholds=marks)
    plot_pr(out / "pr.png", labels, probs, task=task, class_names=names, positive_index=pos, thresholds=marks)
    if "confusion_matrix" in metrics:
        plot_confusion(out / "confusion.png", np.asarray(metrics["confusion_matrix"]), names)
    if "error" not in metrics["calibration"]:
        plot_reliability(out / "reliability.png", labels, Postprocess().probabilities(result.logits, task), probs,
                         task=task)
    if history.is_file():
        rows = pd.read_csv(history).to_dict("records")
        plot_history(out / "history.png", rows, metrics=history_rates(rows))


def _record_summary(run: Run, split: str, metrics: dict[str, Any], checkpoint: str) -> None:
    summary_path = run.path / "metrics.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.setdefault("eval", {})[split] = {**headline(metrics), "n": metrics["n"], "checkpoint": checkpoint}
    atomic_write_json(summary_path, summary)


def _task_details(run: Run, result: EvalResult, post: Postprocess, split: str) -> list[str]:
    """Task-specific metrics (per-label CIs and decisions, operating points, decision curve) and subgroups."""
    ev, seed, metrics = run.config.eval, run.config.seed, result.metrics
    labels, probs, names, pos = result.labels, result.probs, list(result.class_names), result.positive_index
    notes: list[str] = []
    if result.task == "multilabel":
        notes = _multilabel_details(metrics, labels, probs, post.to_dict(), names, split, ev.n_bootstrap, seed)
    elif result.task == "binary":
        _binary_details(metrics, labels, probs, post, pos, ev.n_bootstrap, seed)
    if ev.subgroups:
        from .subgroups import subgroup_analysis

        metrics["subgroups"] = subgroup_analysis(
            result.task, labels, probs, result.meta, ev.subgroups, class_names=names, positive_index=pos,
            threshold=post.threshold, n_resamples=min(ev.n_bootstrap or 200, 1000), seed=seed)
    return notes


def evaluate_split(run: Run, split: str = "test", *, checkpoint: str = "best", device: torch.device | None = None,
                   data: LoadedData | None = None) -> tuple[EvalResult, Postprocess]:
    """Metrics of ``checkpoint`` on ``split`` with the calibration stored for that checkpoint; writes nothing
    (a checkpoint never calibrated is calibrated first, which stores its post-processing)."""
    device = device or torch.device("cpu")
    cfg, spec, ev = run.config, run.dataset, run.config.eval
    data = data or load_data(cfg.data)
    table = data.split(split)
    names, task, pos = list(spec.class_names), spec.task, spec.positive_index
    model, meta = run.build_model(checkpoint, device=str(device))
    post = _postprocess(run, checkpoint, data, device, model)
    logits = split_logits(run, model, table, device, where=f"{split} split")
    probs, labels = post.probabilities(logits, task), np.asarray(table.labels)
    metrics = {"split": split, "checkpoint": checkpoint, "checkpoint_epoch": meta.get("epoch"), "n": len(labels),
               **_scores(task, labels, probs, names, pos, ev, cfg.seed)}
    result = EvalResult(metrics, list(table.ids), labels, probs, tuple(names), task, pos, ev.threshold,
                        post.thresholds if task == "multilabel" else post.threshold, logits, meta=table.meta)
    eval_notes = _task_details(run, result, post, split)
    if ev.tta:
        tta_probs = post.probabilities(split_logits(run, model, table, device, tta=True, where=f"{split} split"), task)
        tta = _scores(task, labels, tta_probs, names, pos, ev, cfg.seed)
        metrics["tta"] = {"views": run.model_spec.preset, **{k: tta[k] for k in (*HEADLINE, "ci") if k in tta}}
    try:
        metrics["calibration"] = calibration_report(labels, logits, task=task, temperature=post.temperature)
    except Exception as e:
        metrics["calibration"] = {"error": str(e)}
    metrics["postprocess"] = _postprocess_summary(post, split, eval_notes)
    return result, post


def write_evaluation(run: Run, result: EvalResult, post: Postprocess, out: Path) -> None:
    """The files of an evaluation: metrics.json, predictions.csv, plots, report.html, model_card.md, and the
    run's summary in ``RUN/metrics.json``."""
    from ..reports.evaluation import write_report
    from ..reports.model_card import write_model_card

    split, metrics = result.metrics["split"], result.metrics
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "predictions.csv", result.frame().to_csv(index=False))
    _plots(out, result, post, run.path / "history.csv")
    report = write_report(run, split, metrics, out, labels=result.labels, probs=result.probs)
    card = write_model_card(run, split, metrics, out)
    _record_summary(run, split, metrics, metrics["checkpoint"])
    log.info("evaluation on %s written to %s (report %s, model card %s)", split, out, report, card)


def evaluate_run(run: Run, split: str = "test", *, checkpoint: str = "best", device: torch.device | None = None,
                 data: LoadedData | None = None, out_dir: str | Path | None = None) -> EvalResult:
    """:func:`evaluate_split`, then its files under ``out_dir`` (default ``RUN/eval-<split>/``)."""
    result, post = evaluate_split(run, split, checkpoint=checkpoint, device=device, data=data)
    write_evaluation(run, result, post, Path(out_dir) if out_dir else run.path / f"eval-{split}")
    return result
