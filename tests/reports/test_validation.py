"""The external-validation report and model-card section are pure functions of metrics.json: every figure with its
CI beside the internal one, the update in words, and what is missing said rather than left blank."""

from __future__ import annotations

import copy

import pytest

from medcls.reports.validation import (
    external_validation_lines,
    figure_keys,
    figure_label,
    render_validation,
    validation_card,
)
from medcls.validation import validate_model


@pytest.fixture(scope="module")
def metrics(evaluated_run, pneumonia_npz):
    return validate_model(evaluated_run.path, "medmnist:pneumoniamnist", options={"path": str(pneumonia_npz)},
                          split="test", n_bootstrap=30, recalibrate="intercept").metrics


def test_labels_and_order_of_figures():
    assert figure_label("citl[benign]") == "calibration-in-the-large (0) · benign"
    assert figure_keys({"ece": 1, "citl[b]": 1, "auc": 1, "citl[a]": 1, "sensitivity": 1}) == \
        ["auc", "sensitivity", "citl[a]", "citl[b]", "ece"]


def test_the_card_section_has_every_figure_and_the_update(metrics):
    text = "\n".join(external_validation_lines(metrics))
    for label in ("| AUC |", "| calibration slope (1) |", "| O/E (1) |", "| ICI |", "external − internal"):
        assert label in text
    assert "### Model updating (recalibration)" in text and "logit p' = " in text and "seed 0" in text
    assert validation_card(metrics, None).startswith("# Model card: resnet18 (normal, pneumonia)")
    assert validation_card(metrics, "# Card\n\nbody\n").startswith("# Card\n\nbody\n\n## External validation")


def test_the_page_says_what_is_missing(metrics):
    m = copy.deepcopy(metrics)
    m["internal"], m["difference"], m["internal_missing"] = None, None, "no internal test predictions at X"
    page = render_validation(m)
    assert "no internal test predictions at X" in page and "external − internal" not in page
    assert "<h2>Model updating</h2>" in page and "<h2>Sites</h2>" not in page
    assert "not available" in page or "no out-of-distribution gate" in page  # a run directory has no gate


def test_each_operating_point_row_has_its_own_metrics_verdict(metrics):
    """A specificity that moved is that row's flag; the sensitivity row beside it that held says so."""
    m = copy.deepcopy(metrics)
    m["external"]["threshold_transfer"] = {"default": {
        "threshold": 0.5, "provenance": "fixed", "flags": ["specificity 1.000 on val outside the CI [0.880, 0.949] here"],
        "sensitivity": {"chosen": 0.841, "value": 0.81, "low": 0.769, "high": 0.849},
        "specificity": {"chosen": 1.0, "value": 0.919, "low": 0.88, "high": 0.949}}}
    html = render_validation(m)
    start = html.index("<td>default</td><td>0.5</td><td>sensitivity</td>")
    sens_row = html[start:html.index("</tr>", start)]
    assert "holds" in sens_row and "outside the CI" not in sens_row
    assert html.count("specificity 1.000 on val outside the CI [0.880, 0.949] here") == 1
