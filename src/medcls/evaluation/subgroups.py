"""Subgroup analysis: the headline metrics per value of a metadata column (sex, age band, centre, view,
scanner), with bootstrap CIs and n, and the largest AUC gap between subgroups with a permutation test.

Binary tasks report AUC, sensitivity and specificity (at the decision threshold in use); multiclass tasks
AUC (macro one-vs-rest), accuracy and balanced accuracy (the mean per-class sensitivity), in the order of
:data:`medcls.metrics.HEADLINE` like every other table. A subgroup with
fewer than ``MIN_N`` cases, or fewer than ``MIN_PER_CLASS`` of some class, is marked small: its CIs are
wide and it is left out of the gap.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, did_you_mean
from ..metrics import bootstrap_ci, headline_subset, task_auc

MIN_N, MIN_PER_CLASS, MAX_LEVELS, BANDS = 30, 5, 12, 4
METRICS = {"binary": headline_subset("auc", "sensitivity", "specificity"),
           "multiclass": headline_subset("auc", "accuracy", "balanced_accuracy")}


def subgroup_labels(meta: pd.DataFrame | None, columns: Sequence[str]) -> dict[str, pd.Series]:
    """Per column, each row's subgroup as text; numeric columns with many values become quartile bands
    (``age 10-14``); missing values are their own subgroup."""
    if meta is None or meta.empty:
        raise ConfigError("eval.subgroups names metadata columns, but this split carries no metadata (sources "
                          "with metadata: btxrd, csv with metadata columns)")
    out = {}
    for col in columns:
        if col not in meta.columns:
            raise ConfigError(f"eval.subgroups: no metadata column {col!r}.{did_you_mean(col, list(meta.columns))} "
                              f"Columns: {', '.join(map(str, meta.columns))}")
        v = meta[col]
        if pd.api.types.is_numeric_dtype(v) and v.nunique() > MAX_LEVELS:
            band = pd.qcut(v, BANDS, duplicates="drop", labels=False)
            span = v.groupby(band).agg(["min", "max"])  # labelled by the values each band holds: "age 10-30"
            v = band.map({b: f"{col} {r['min']:g}-{r['max']:g}" for b, r in span.iterrows()})
        out[col] = v.astype(object).where(v.notna(), "missing").astype(str).reset_index(drop=True)
    return out


def _natural(text: str) -> list:
    """Sort key: numbers in a label compare as numbers ("age 9-30" before "age 31-42", centre 2 before 10)."""
    return [(0, float(t), "") if t[:1].isdigit() else (1, 0.0, t) for t in re.findall(r"\d+(?:\.\d+)?|\D+", text)]


def _gap(task: str, y: np.ndarray, p: np.ndarray, groups: pd.Series, rows: list[dict[str, Any]],
         names: Sequence[str], pos: int | None, n_permutations: int, seed: int) -> dict[str, Any] | None:
    """The largest AUC difference between two subgroups that are not small, and a permutation test of it
    (subgroup membership shuffled among the two subgroups' cases)."""
    ok = [r for r in rows if not r["small"] and not np.isnan(r["auc"]["value"])]
    if len(ok) < 2:
        return None
    hi, lo = max(ok, key=lambda r: r["auc"]["value"]), min(ok, key=lambda r: r["auc"]["value"])
    idx = np.flatnonzero(groups.isin([hi["group"], lo["group"]]).to_numpy())
    in_hi = (groups.iloc[idx] == hi["group"]).to_numpy()
    observed = hi["auc"]["value"] - lo["auc"]["value"]
    rng, beyond = np.random.default_rng(seed), 0
    auc = partial(task_auc, task, class_names=names, positive_index=pos)
    for _ in range(n_permutations):
        perm = rng.permutation(in_hi)
        d = auc(y[idx[perm]], p[idx[perm]]) - auc(y[idx[~perm]], p[idx[~perm]])
        beyond += bool(abs(d) >= abs(observed) - 1e-12)
    return {"metric": "auc", "higher": hi["group"], "lower": lo["group"], "difference": observed,
            "p_value": (beyond + 1) / (n_permutations + 1), "test": f"permutation test, {n_permutations} permutations"}


def subgroup_analysis(task: str, labels: Any, probs: Any, meta: pd.DataFrame | None, columns: Sequence[str], *,
                      class_names: Sequence[str], positive_index: int | None = None, threshold: float = 0.5,
                      n_resamples: int = 1000, n_permutations: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``{column: {"groups": [{group, n, per_class, small, metric: {value, low, high}}...], "largest_gap"}}``."""
    pos = 1 if positive_index is None else positive_index
    if task not in METRICS:
        raise ConfigError(f"eval.subgroups supports binary and multiclass tasks, not {task}")
    y, p = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    out: dict[str, Any] = {}
    for col, groups in subgroup_labels(meta, columns).items():
        rows = []
        for g in sorted(groups.unique(), key=_natural):
            m = (groups == g).to_numpy()
            counts = np.bincount(y[m], minlength=len(class_names))
            row: dict[str, Any] = {"group": g, "n": int(m.sum()),
                                   "per_class": dict(zip(class_names, counts.tolist(), strict=True)),
                                   "small": bool(m.sum() < MIN_N or counts.min() < MIN_PER_CLASS)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    ci = bootstrap_ci(task, y[m], p[m], class_names=class_names, positive_index=positive_index,
                                      threshold=threshold, n_resamples=n_resamples, seed=seed, metrics=METRICS[task])
                    row.update({k: {f: ci[k][f] for f in ("value", "low", "high")} for k in METRICS[task]})
                except Exception:  # one class only: nothing to estimate
                    row.update({k: {"value": float("nan"), "low": float("nan"), "high": float("nan")}
                                for k in METRICS[task]})
            rows.append(row)
        out[col] = {"groups": rows, "metrics": list(METRICS[task]),
                    "largest_gap": _gap(task, y, p, groups, rows, class_names, pos, n_permutations, seed)}
    return {"columns": out, "min_n": MIN_N, "min_per_class": MIN_PER_CLASS,
            "threshold": threshold if task == "binary" else None}
