"""Evaluation metrics as one flat table of numbers (cross-validation summaries, experiment tracking)."""

from __future__ import annotations

from typing import Any

from ..utils import nested_items

_SKIP = {"n", "tp", "fp", "tn", "fn", "threshold", "prevalence", "support", "checkpoint_epoch", "n_bins", "ci"}
_NESTED = ("per_class", "per_label", "calibration", "tta")


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics of an evaluation, nested ones as ``per_class.<name>.<metric>`` / ``calibration.<metric>``.

    Left out: counts and settings (``_SKIP``, at any level), bools, nested sections other than ``_NESTED``,
    and anything nested deeper than three keys.
    """
    return {".".join(path): float(v) for path, v in nested_items(metrics)
            if isinstance(v, int | float) and not isinstance(v, bool) and len(path) <= 3
            and (len(path) == 1 or path[0] in _NESTED) and not _SKIP.intersection(path)}
