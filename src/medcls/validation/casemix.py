"""Case mix and shift between development and an external site: prevalence, image size and intensity, and the
out-of-distribution gate's scores against the bundle's validation reference (:mod:`medcls.metrics.drift`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..metrics.drift import drift_tests
from .observe import STATS

MAX_DRIFT_IMAGES = 2000  # cases the drift tests (MMD on features) use, evenly spaced


def prevalence(counts: np.ndarray, class_names: list[str]) -> dict[str, float]:
    total = max(int(np.sum(counts)), 1)
    return {c: float(n) / total for c, n in zip(class_names, counts, strict=True)}


def development_prevalence(splits: dict[str, Any] | None, class_names: list[str]) -> dict[str, Any]:
    """Class shares of each development split (``{split: {"n", "per_class"}}`` as runs and bundles store it)."""
    out = {}
    for s, v in (splits or {}).items():
        per = v.get("per_class") or {}
        out[s] = {"n": v.get("n"), **prevalence(np.asarray([per.get(c, 0) for c in class_names]), class_names)}
    return out


def stats_summary(stats: np.ndarray) -> dict[str, Any]:
    """Median, quartiles and range of each image statistic (:data:`~.observe.STATS`), and the channel counts."""
    out: dict[str, Any] = {"n": len(stats)}
    for k, name in enumerate(STATS):
        col = stats[:, k]
        if name == "channels":
            vals, counts = np.unique(col.astype(int), return_counts=True)
            out[name] = {str(v): int(c) for v, c in zip(vals, counts, strict=True)}
            continue
        q = np.quantile(col, [0, 0.25, 0.5, 0.75, 1])
        out[name] = dict(zip(("min", "q1", "median", "q3", "max"), map(float, q), strict=True))
    return out


def ood_shift(ood_scores: np.ndarray | None, features: np.ndarray | None, predicted: np.ndarray, gate, reference,
              *, seed: int = 0) -> dict[str, Any]:
    """Share flagged by the gate here and on the development validation set, both score distributions and the
    drift tests (KS of the scores, MMD of the features, Fisher's test of the flagged share)."""
    if ood_scores is None or gate is None:
        return {"available": False, "note": "no out-of-distribution gate (a run directory or an older bundle): "
                                            "validate an exported bundle to see it"}
    q = (0.05, 0.25, 0.5, 0.75, 0.95)
    out: dict[str, Any] = {"available": True, "threshold": gate.threshold,
                           "flagged_here": float(np.mean(ood_scores > gate.threshold)),
                           "n_flagged_here": int(np.sum(ood_scores > gate.threshold)),
                           "score_quantiles_here": dict(zip(map(str, q), np.quantile(ood_scores, q).tolist(),
                                                            strict=True))}
    if reference is None:
        out["note"] = "the bundle has no validation reference (exported before medcls stored one)"
        return out
    out["flagged_development_val"] = float(np.mean(reference.scores > reference.threshold))
    out["score_quantiles_development_val"] = dict(zip(map(str, q), np.quantile(reference.scores, q).tolist(),
                                                      strict=True))
    rows = np.unique(np.linspace(0, len(ood_scores) - 1, min(len(ood_scores), MAX_DRIFT_IMAGES)).astype(int))
    if len(rows) >= 2:
        out["drift"] = drift_tests(reference, features[rows], ood_scores[rows], predicted[rows], seed=seed)
    return out
