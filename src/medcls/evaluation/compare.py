"""Paired comparison of two runs on the same cases: bootstrap CI and p-value of the difference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from ..metrics import delong_test, paired_bootstrap_diff
from ..runs import Run, load_run


def _predictions(run: Run, split: str) -> pd.DataFrame:
    path = run.path / f"eval-{split}" / "predictions.csv"
    if not path.is_file():
        from .evaluator import evaluate_run

        evaluate_run(run, split)
    return pd.read_csv(path)


def compare_runs(run_a: Run | str | Path, run_b: Run | str | Path, split: str = "test", *,
                 n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Difference B − A of the headline metrics on ``split`` with a paired bootstrap (and DeLong for AUC)."""
    a = run_a if isinstance(run_a, Run) else load_run(run_a)
    b = run_b if isinstance(run_b, Run) else load_run(run_b)
    if a.spec.class_names != b.spec.class_names or a.spec.task != b.spec.task:
        raise DataError(f"runs predict different things: {a.spec.task} {list(a.spec.class_names)} vs "
                        f"{b.spec.task} {list(b.spec.class_names)}")
    if a.spec.task == "multilabel":
        raise DataError("compare supports binary and multiclass runs")
    pa, pb = _predictions(a, split), _predictions(b, split)
    merged = pa.merge(pb, on="id", suffixes=("_a", "_b"))
    if len(merged) != len(pa) or len(merged) != len(pb):
        raise DataError(f"the runs were evaluated on different cases of {split!r} ({len(pa)} vs {len(pb)} rows, "
                        f"{len(merged)} shared ids): compare needs the same data source and split")
    if not (merged["label_a"] == merged["label_b"]).all():
        raise DataError("the runs disagree on the labels of the same case ids")
    names = list(a.spec.class_names)
    y = np.array([names.index(c) for c in merged["label_a"]])
    probs_a = merged[[f"prob_{c}_a" for c in names]].to_numpy()
    probs_b = merged[[f"prob_{c}_b" for c in names]].to_numpy()
    pos = a.spec.positive_index
    metrics = ("auc", "accuracy", "sensitivity", "specificity") if a.spec.task == "binary" else ("auc", "accuracy", "balanced_accuracy")
    out = paired_bootstrap_diff(y, probs_a, probs_b, task=a.spec.task, class_names=names, positive_index=pos,
                                threshold=a.config.eval.threshold, n_resamples=n_resamples, seed=seed, metrics=metrics)
    if a.spec.task == "binary":
        out["delong_auc"] = delong_test(y == pos, probs_a[:, pos], probs_b[:, pos])
    out.update({"run_a": str(a.path), "run_b": str(b.path), "split": split, "n": len(y)})
    return out
