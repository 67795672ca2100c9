"""Paired comparison of two runs on the same cases: bootstrap CI and p-value of the difference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..metrics import delong_test, paired_bootstrap_diff
from ..runs import Run, load_run
from .evaluator import evaluate_run
from .result import EvalResult, read_predictions


def _predictions(run: Run, split: str) -> EvalResult:
    """The run's stored predictions on ``split``; evaluated first when it has none."""
    path = run.path / f"eval-{split}" / "predictions.csv"
    if not path.is_file():
        return evaluate_run(run, split)
    spec = run.dataset
    return read_predictions(path, class_names=spec.class_names, task=spec.task, positive_index=spec.positive_index,
                            threshold=run.config.eval.threshold)


def compare_runs(run_a: Run | str | Path, run_b: Run | str | Path, split: str = "test", *,
                 n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Difference B − A of the headline metrics on ``split`` with a paired bootstrap (and DeLong for AUC)."""
    a = run_a if isinstance(run_a, Run) else load_run(run_a)
    b = run_b if isinstance(run_b, Run) else load_run(run_b)
    if a.dataset.class_names != b.dataset.class_names or a.dataset.task != b.dataset.task:
        raise DataError(f"runs predict different things: {a.dataset.task} {list(a.dataset.class_names)} vs "
                        f"{b.dataset.task} {list(b.dataset.class_names)}")
    if a.dataset.task == "multilabel":
        raise DataError("compare supports binary and multiclass runs")
    pa, pb = _predictions(a, split), _predictions(b, split)
    shared = set(pa.ids) & set(pb.ids)
    if len(shared) != pa.n or len(shared) != pb.n:
        raise DataError(f"the runs were evaluated on different cases of {split!r} ({pa.n} vs {pb.n} rows, "
                        f"{len(shared)} shared ids): compare needs the same data source and split")
    pb = pb.align(pa.ids)
    if not np.array_equal(pa.labels, pb.labels):
        raise DataError("the runs disagree on the labels of the same case ids")
    names = list(a.dataset.class_names)
    y, probs_a, probs_b = pa.labels, pa.probs, pb.probs
    pos = a.dataset.positive_index
    metrics = (("auc", "accuracy", "sensitivity", "specificity") if a.dataset.task == "binary"
               else ("auc", "accuracy", "balanced_accuracy"))
    out = paired_bootstrap_diff(y, probs_a, probs_b, task=a.dataset.task, class_names=names, positive_index=pos,
                                threshold=a.config.eval.threshold, n_resamples=n_resamples, seed=seed, metrics=metrics)
    if a.dataset.task == "binary":
        out["delong_auc"] = delong_test(y == pos, probs_a[:, pos], probs_b[:, pos])
    out.update({"run_a": str(a.path), "run_b": str(b.path), "split": split, "n": len(y)})
    return out
