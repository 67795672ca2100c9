"""Tabular metadata -> tensors, fitted on the training split only.

Numeric columns are standardised with the train mean/std; a missing value (blank,
NaN, absent key) becomes 0 with a ``missing`` flag of 1. Categorical columns get a
vocabulary from train: index 0 = missing, 1 = unknown (seen at val/test/inference
but not in train; counted and warned about), 2.. = the train values. The state is
plain JSON (stored in the run's ``data.json`` and in bundles), so evaluation,
``Predictor`` and the REST API encode exactly as training did.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError, did_you_mean

log = logging.getLogger("medcls")

MISSING, UNKNOWN = 0, 1  # reserved categorical indices


def _short(items: Sequence[Any], k: int = 5) -> str:
    items = list(items)
    return ", ".join(map(repr, items[:k])) + (f" ... ({len(items)} in all)" if len(items) > k else "")


def category(value: Any) -> str | None:
    """Canonical string of a categorical value (1, 1.0 and '1' are one category); None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, int | float | np.integer | np.floating):
        f = float(value)
        return str(int(f)) if f.is_integer() else repr(f)
    s = str(value).strip()
    return s or None


def numeric_values(values: Sequence[Any] | pd.Series, column: str, where: str, ids: Sequence[str] | None = None):
    """(float64 values with NaN where missing, missing mask); non-numeric text is a :class:`DataError`."""
    raw = pd.Series(list(values), dtype=object)
    blank = raw.map(lambda v: v is None or (isinstance(v, float) and math.isnan(v)) or
                    (isinstance(v, str) and not v.strip()))
    num = pd.to_numeric(raw.where(~blank, np.nan), errors="coerce")
    bad = (num.isna() & ~blank).to_numpy() | raw.map(lambda v: isinstance(v, bool)).to_numpy()
    if bad.any():
        rows = np.flatnonzero(bad)
        where_rows = [ids[i] for i in rows] if ids is not None else [str(i) for i in rows]
        raise DataError(f"{where}: numeric column {column!r} holds non-numeric value(s) "
                        f"{_short(sorted({str(raw[i]) for i in rows}))} (rows/ids {_short(where_rows)}); expected "
                        "numbers (leave a cell empty when the value is unknown)")
    vals = num.to_numpy(dtype=np.float64)
    return vals, np.isnan(vals)


@dataclass
class TabularEncoder:
    """Fitted state of the numeric and categorical columns (see the module doc)."""

    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    vocab: dict[str, list[str]] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def cardinalities(self) -> list[int]:
        """Embedding sizes per categorical column (missing + unknown + train values)."""
        return [2 + len(self.vocab[c]) for c in self.categorical]

    @classmethod
    def fit(cls, frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str], *,
            where: str = "train split", ids: Sequence[str] | None = None) -> TabularEncoder:
        check_columns(frame, [*numeric, *categorical], where)
        mean, std = [], []
        for c in numeric:
            vals, miss = numeric_values(frame[c], c, where, ids)
            ok = vals[~miss]
            m = float(ok.mean()) if len(ok) else 0.0
            s = float(ok.std()) if len(ok) > 1 else 0.0
            if not len(ok):
                warnings.warn(f"{where}: numeric column {c!r} is empty on every row; it carries no information",
                              stacklevel=2)
            mean.append(m)
            std.append(s if s > 1e-12 else 1.0)
        vocab = {}
        for c in categorical:
            cats = {v for v in map(category, frame[c]) if v is not None}
            vocab[c] = sorted(cats)
        return cls(list(numeric), list(categorical), mean, std, vocab)

    def to_dict(self) -> dict[str, Any]:
        return {"numeric": self.numeric, "categorical": self.categorical, "mean": self.mean, "std": self.std,
                "vocab": self.vocab}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TabularEncoder:
        return cls(list(d["numeric"]), list(d["categorical"]), [float(v) for v in d["mean"]],
                   [float(v) for v in d["std"]], {k: list(v) for k, v in d["vocab"].items()})

    def encode(self, frame: pd.DataFrame, *, where: str, ids: Sequence[str] | None = None,
               warn: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``numeric``/``numeric_missing`` (N, n_num) float32, ``categorical`` (N, n_cat) int64, the
        per-row ``present`` flag (any column known) and a report of unknown categories and missing values."""
        check_columns(frame, self.columns, where)
        n = len(frame)
        out: dict[str, np.ndarray] = {}
        known = np.zeros(n, bool)
        report: dict[str, Any] = {"unknown_categories": {}, "missing_values": {}}
        if self.numeric:
            num = np.zeros((n, len(self.numeric)), np.float32)
            miss = np.zeros((n, len(self.numeric)), np.float32)
            for j, c in enumerate(self.numeric):
                vals, m = numeric_values(frame[c], c, where, ids)
                num[:, j] = np.where(m, 0.0, (vals - self.mean[j]) / self.std[j])
                miss[:, j] = m
                known |= ~m
                if m.any():
                    report["missing_values"][c] = int(m.sum())
            out["numeric"], out["numeric_missing"] = num, miss
        if self.categorical:
            cat = np.zeros((n, len(self.categorical)), np.int64)
            for j, c in enumerate(self.categorical):
                index = {v: k + 2 for k, v in enumerate(self.vocab[c])}
                vals = [category(v) for v in frame[c]]
                cat[:, j] = [MISSING if v is None else index.get(v, UNKNOWN) for v in vals]
                unseen = sorted({v for v in vals if v is not None and v not in index})
                if unseen:
                    report["unknown_categories"][c] = {"count": int((cat[:, j] == UNKNOWN).sum()), "values": unseen[:20]}
                n_miss = int((cat[:, j] == MISSING).sum())
                if n_miss:
                    report["missing_values"][c] = n_miss
                known |= cat[:, j] != MISSING
            out["categorical"] = cat
        out["present"] = known.astype(np.float32)
        if warn and report["unknown_categories"]:
            parts = [f"{c}: {v['count']} ({_short(v['values'], 3)})" for c, v in report["unknown_categories"].items()]
            msg = (f"{where}: {sum(v['count'] for v in report['unknown_categories'].values())} categorical value(s) "
                   f"unseen in train were encoded as 'unknown' — {'; '.join(parts)}")
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)
        return out, report


def check_columns(frame: pd.DataFrame | None, columns: Sequence[str], where: str) -> None:
    """Every configured column exists in ``frame`` (else a :class:`DataError` with did-you-mean)."""
    if not columns:
        return
    if frame is None:
        raise DataError(f"{where}: the data source carries no per-sample metadata, but inputs declares "
                        f"{list(columns)}; use a csv:/btxrd: source whose manifest has those columns")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        hints = "".join(did_you_mean(c, [str(x) for x in frame.columns]) for c in missing)
        raise DataError(f"{where}: configured input column(s) {', '.join(map(repr, missing))} are not in the "
                        f"metadata.{hints} Columns: {', '.join(map(str, frame.columns))}")
