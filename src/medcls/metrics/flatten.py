"""Evaluation metrics as one flat table of numbers (cross-validation summaries, experiment tracking)."""

from __future__ import annotations

from typing import Any

_SKIP = {"n", "tp", "fp", "tn", "fn", "threshold", "prevalence", "support", "checkpoint_epoch", "n_bins"}
_NESTED = ("per_class", "per_label", "calibration", "tta")


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics of an evaluation, nested ones as ``per_class.<name>.<metric>`` / ``calibration.<metric>``."""
    out: dict[str, float] = {}

    def walk(prefix: str, d: dict[str, Any], depth: int) -> None:
        for k, v in d.items():
            if k in _SKIP or k == "ci" or isinstance(v, bool):
                continue
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[prefix + k] = float(v)
            elif isinstance(v, dict) and depth < 2:
                walk(f"{prefix}{k}.", v, depth + 1)

    walk("", {k: v for k, v in metrics.items() if not isinstance(v, dict) or k in _NESTED}, 0)
    return out
