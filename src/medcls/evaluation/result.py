"""What an evaluation returns, and the one reader of a stored ``predictions.csv``.

:class:`EvalResult` carries the metrics and the per-sample data they were computed
from (ids, labels, calibrated probabilities, logits), so callers (compare, cv,
ablation, Grad-CAM error mining, the report) use arrays instead of parsing a CSV
back; it reads like the metrics dict (``result["auc"]``). :func:`read_predictions`
is the one way back from a file written by :meth:`EvalResult.frame`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..artefact import findings_text
from ..errors import DataError
from ..metrics.operating_points import label_decisions


@dataclass(eq=False)
class EvalResult(Mapping):
    """Metrics of one evaluation and the cases behind them (a read-only mapping over ``metrics``).

    ``labels``: class indices (binary, multiclass) or a 0/1 matrix (multilabel); ``probs``: calibrated
    probabilities, one column per class/label; ``threshold``: ``eval.threshold``; ``decision_threshold``:
    the operating point in use (multilabel: ``{label: t}``).
    """  # a Mapping, so ``evaluate(run)["auc"]`` and ``dict(result)`` keep working for metrics-dict users

    metrics: dict[str, Any]
    ids: list[str]
    labels: np.ndarray
    probs: np.ndarray
    class_names: tuple[str, ...]
    task: str
    positive_index: int | None = None
    threshold: float = 0.5
    decision_threshold: float | dict[str, float] | None = None
    logits: np.ndarray | None = field(default=None, repr=False)
    meta: pd.DataFrame | None = field(default=None, repr=False)  # per-case metadata (subgroups), when the data has it

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    @property
    def n(self) -> int:
        return len(self.ids)

    def label_names(self) -> list[str]:
        """The true class of each case by name (binary and multiclass)."""
        return [self.class_names[i] for i in self.labels]

    def predicted(self, threshold: float | None = None) -> np.ndarray:
        """Predicted class index per case: binary at ``threshold`` (default ``self.threshold``; the operating
        point in use gives the decision), multiclass the arg-max."""
        if self.task == "binary":
            pos = self.positive_index
            t = self.threshold if threshold is None else threshold
            return np.where(self.probs[:, pos] >= t, pos, 1 - pos)
        return self.probs.argmax(1)

    def align(self, ids: Sequence[str]) -> EvalResult:
        """The same result with its cases in the order of ``ids`` (every id must be present)."""
        index = {cid: i for i, cid in enumerate(self.ids)}
        missing = [cid for cid in ids if cid not in index]
        if missing:
            raise DataError(f"{len(missing)} case id(s) not in this evaluation, e.g. {missing[0]!r}")
        rows = np.asarray([index[cid] for cid in ids], dtype=int)
        return EvalResult(self.metrics, list(ids), self.labels[rows], self.probs[rows], self.class_names, self.task,
                          self.positive_index, self.threshold, self.decision_threshold,
                          None if self.logits is None else self.logits[rows],
                          None if self.meta is None else self.meta.iloc[rows].reset_index(drop=True))

    def frame(self) -> pd.DataFrame:
        """One row per case, the layout of ``predictions.csv`` (see :mod:`.evaluator`)."""
        names = list(self.class_names)
        df = pd.DataFrame({"id": self.ids})
        if self.task == "multilabel":
            return _multilabel_frame(df, self.labels, self.probs, names, self.threshold, self.decision_threshold)
        df["label"] = self.label_names()
        for j, c in enumerate(names):
            df[f"prob_{c}"] = self.probs[:, j]
        df["predicted"] = [names[i] for i in self.predicted()]
        df["correct"] = df["predicted"] == df["label"]
        if self.task == "binary" and self.decision_threshold is not None:
            df["decision"] = [names[i] for i in self.predicted(self.decision_threshold)]
        return df


def _multilabel_frame(df: pd.DataFrame, labels: np.ndarray, probs: np.ndarray, names: list[str], threshold: float,
                      decision_threshold: dict[str, float] | None) -> pd.DataFrame:
    for j, c in enumerate(names):
        df[f"true_{c}"] = labels[:, j].astype(int)
    for j, c in enumerate(names):
        df[f"prob_{c}"] = probs[:, j]
        df[f"pred_{c}"] = (probs[:, j] >= threshold).astype(int)
    if decision_threshold is not None:
        called = label_decisions(probs, decision_threshold, class_names=names)
        for j, c in enumerate(names):
            df[f"decision_{c}"] = called[:, j].astype(int)
        df["decision"] = [findings_text([c for c, f in zip(names, row, strict=True) if f]) for row in called]
    return df


def _columns(df: pd.DataFrame, cols: list[str], path: Path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{path} is not a medcls predictions file for these classes: expected columns "
                        f"{', '.join(cols)}, missing {', '.join(missing)}")


def read_predictions(path: str | Path, *, class_names: Sequence[str], task: str, positive_index: int | None = None,
                     threshold: float = 0.5) -> EvalResult:
    """Read a stored ``predictions.csv`` back as an :class:`EvalResult` (metrics from the ``metrics.json``
    beside it, when present). One line naming the file when it is missing or has other columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no predictions file at {path}; run `medcls evaluate` first")
    names = list(class_names)
    df = pd.read_csv(path, dtype={"id": str, "label": str}, keep_default_na=False)
    probs_cols = [f"prob_{c}" for c in names]
    if task == "multilabel":
        _columns(df, ["id", *[f"true_{c}" for c in names], *probs_cols], path)
        labels = df[[f"true_{c}" for c in names]].to_numpy(dtype=int)
    else:
        _columns(df, ["id", "label", *probs_cols], path)
        unknown = sorted(set(df["label"]) - set(names))
        if unknown:
            raise DataError(f"{path}: labels {unknown} are not classes of this model ({', '.join(names)})")
        labels = np.asarray([names.index(v) for v in df["label"]], dtype=int)
    metrics_file = path.parent / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return EvalResult(metrics, df["id"].tolist(), labels, df[probs_cols].to_numpy(dtype=float), tuple(names), task,
                      positive_index, threshold)
