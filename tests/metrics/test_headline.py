"""Every list of headline metrics is a selection of the one declaration, in its order."""

from __future__ import annotations

import pytest

from medcls.metrics import HEADLINE, HEADLINE_BRIEF, HEADLINE_BY_TASK, HEADLINE_SUMMARY, headline_subset


def _views() -> dict[str, tuple[str, ...]]:
    from medcls.evaluation import evaluator, subgroups
    from medcls.experiments.cv import SHOWN
    from medcls.metrics import bootstrap
    from medcls.reports import model_card, plots

    views = {"summary": HEADLINE_SUMMARY, "brief": HEADLINE_BRIEF, "evaluator": evaluator.HEADLINE,
             "model card": model_card.HEADLINE, "history figure": plots.HISTORY_RATES, "cv": SHOWN}
    views.update({f"bootstrap {t}": bootstrap.HEADLINE_BY_TASK[t] for t in HEADLINE_BY_TASK})
    views.update({f"subgroups {t}": m for t, m in subgroups.METRICS.items()})
    return views


def test_every_list_is_a_view_of_the_one_tuple_in_its_order():
    assert len(set(HEADLINE)) == len(HEADLINE)
    for name, view in _views().items():
        assert view and set(view) <= set(HEADLINE), name
        assert list(view) == [k for k in HEADLINE if k in view], name  # same order as the declaration


def test_a_selection_keeps_the_declared_order_and_refuses_unknown_names():
    assert headline_subset("specificity", "auc") == ("auc", "specificity")
    with pytest.raises(ValueError, match="not headline metrics: \\['loss'\\]"):
        headline_subset("auc", "loss")
