"""The headline metrics: one ordered tuple, and the selections of it that tables, figures and CIs show.

Every list of headline metrics in medcls (the model card's performance table, the bootstrap CIs per task,
the run summary, the CLI tables, the history figure, cross-validation, subgroups) is a selection of
:data:`HEADLINE` made with :func:`headline_subset`, so all of them name the same metrics in the same order.
"""

from __future__ import annotations

HEADLINE: tuple[str, ...] = (
    "auc", "micro_auc", "ap", "macro_ap", "accuracy", "subset_accuracy", "balanced_accuracy", "sensitivity",
    "specificity", "ppv", "npv", "f1", "kappa", "macro_f1", "quadratic_weighted_kappa")


def headline_subset(*names: str) -> tuple[str, ...]:
    """The named headline metrics, in :data:`HEADLINE` order (a name that is not a headline metric raises)."""
    unknown = [n for n in names if n not in HEADLINE]
    if unknown:
        raise ValueError(f"not headline metrics: {unknown}; add them to medcls.metrics.headline.HEADLINE first")
    return tuple(k for k in HEADLINE if k in names)


# the metrics given bootstrap CIs, per task
HEADLINE_BY_TASK: dict[str, tuple[str, ...]] = {
    "binary": headline_subset("auc", "ap", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv",
                              "npv", "f1", "kappa"),
    "multiclass": headline_subset("auc", "accuracy", "balanced_accuracy", "kappa", "macro_f1"),
    "multilabel": headline_subset("auc"),
}

# the summary of an evaluation: the run's metrics.json, the evaluate command's table, test-time augmentation
HEADLINE_SUMMARY = headline_subset("auc", "micro_auc", "accuracy", "balanced_accuracy", "sensitivity",
                                   "specificity", "f1")

# the shortest summary: the train command's table, the benchmarks
HEADLINE_BRIEF = headline_subset("auc", "accuracy", "sensitivity", "specificity")
