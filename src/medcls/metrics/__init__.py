"""Metrics as pure functions over numpy arrays (see :mod:`.classification`)."""

from .classification import (
    TASKS,
    UndefinedMetricWarning,
    average_precision,
    binary_metrics,
    compute_metrics,
    confusion_counts,
    multiclass_metrics,
    multilabel_metrics,
    roc_auc,
    roc_auc_many,
)

__all__ = [
    "TASKS",
    "UndefinedMetricWarning",
    "average_precision",
    "binary_metrics",
    "compute_metrics",
    "confusion_counts",
    "multiclass_metrics",
    "multilabel_metrics",
    "roc_auc",
    "roc_auc_many",
]
