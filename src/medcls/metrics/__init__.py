"""Metrics as pure functions over numpy arrays.

:mod:`.classification` (point metrics), :mod:`.bootstrap` (confidence intervals,
paired comparisons, DeLong), :mod:`.calibration` (ECE, Brier, temperature
scaling), :mod:`.operating_points` (thresholds chosen on validation data) and
:mod:`.headline` (the one ordered list of headline metrics and its selections); :mod:`.inputs` holds the input
checks they share.
"""

from .bootstrap import (
    bootstrap_ci,
    delong_auc_ci,
    delong_test,
    paired_bootstrap_diff,
    stratified_bootstrap_indices,
)
from .calibration import (
    NotFittedError,
    TemperatureScaler,
    brier_score,
    calibration_report,
    expected_calibration_error,
    max_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)
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
    task_auc,
)
from .curves import net_benefit, roc_band
from .flatten import flat_metrics
from .headline import HEADLINE, HEADLINE_BRIEF, HEADLINE_BY_TASK, HEADLINE_SUMMARY, headline_subset
from .operating_points import apply_thresholds, choose_thresholds, threshold_transfer

__all__ = [
    "HEADLINE",
    "HEADLINE_BRIEF",
    "HEADLINE_BY_TASK",
    "HEADLINE_SUMMARY",
    "TASKS",
    "NotFittedError",
    "TemperatureScaler",
    "UndefinedMetricWarning",
    "apply_thresholds",
    "average_precision",
    "binary_metrics",
    "bootstrap_ci",
    "brier_score",
    "calibration_report",
    "choose_thresholds",
    "compute_metrics",
    "confusion_counts",
    "delong_auc_ci",
    "delong_test",
    "expected_calibration_error",
    "flat_metrics",
    "headline_subset",
    "max_calibration_error",
    "multiclass_metrics",
    "multilabel_metrics",
    "negative_log_likelihood",
    "net_benefit",
    "paired_bootstrap_diff",
    "reliability_curve",
    "roc_auc",
    "roc_auc_many",
    "roc_band",
    "stratified_bootstrap_indices",
    "task_auc",
    "threshold_transfer",
]
