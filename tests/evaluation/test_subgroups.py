"""Subgroup analysis: per metadata value metrics with CIs and n, small subgroups marked, the largest gap
tested; end to end on the BTXRD-style fixture (report.html, model_card.md, metrics.json)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medcls.errors import ConfigError
from medcls.evaluation.subgroups import subgroup_analysis, subgroup_labels


def test_a_subgroup_the_model_fails_on_is_found_and_tested():
    """Sex F: scores carry the label; sex M: noise. The gap is F vs M, large and significant; the 12-case
    group is marked small and kept out of the gap."""
    rng = np.random.default_rng(0)
    n = 400
    sex = np.array(["F"] * 200 + ["M"] * 188 + ["X"] * 12)
    y = rng.integers(0, 2, n)
    score = np.where(sex == "F", 0.25 + 0.5 * y + rng.normal(0, 0.1, n), rng.random(n))
    probs = np.stack([1 - score.clip(0, 1), score.clip(0, 1)], 1)
    meta = pd.DataFrame({"sex": sex, "age": np.arange(n) % 80 + 5.0})
    out = subgroup_analysis("binary", y, probs, meta, ["sex", "age"], class_names=["neg", "pos"], positive_index=1,
                            threshold=0.5, n_resamples=200, n_permutations=200)
    sex_groups = {g["group"]: g for g in out["columns"]["sex"]["groups"]}
    assert set(sex_groups) == {"F", "M", "X"} and sex_groups["X"]["small"] and not sex_groups["F"]["small"]
    assert sex_groups["F"]["auc"]["value"] > 0.95 and 0.35 < sex_groups["M"]["auc"]["value"] < 0.65
    assert sex_groups["F"]["auc"]["low"] <= sex_groups["F"]["auc"]["value"] <= sex_groups["F"]["auc"]["high"]
    assert sex_groups["F"]["n"] == 200 and sum(sex_groups["F"]["per_class"].values()) == 200
    gap = out["columns"]["sex"]["largest_gap"]
    assert (gap["higher"], gap["lower"]) == ("F", "M") and gap["difference"] > 0.3 and gap["p_value"] < 0.01
    ages = [g["group"] for g in out["columns"]["age"]["groups"]]
    assert len(ages) == 4 and all(a.startswith("age ") for a in ages)  # 80 values: quartile bands


def test_no_gap_without_a_difference():
    rng = np.random.default_rng(1)
    n = 600
    y = rng.integers(0, 2, n)
    s = (0.3 + 0.4 * y + rng.normal(0, 0.2, n)).clip(0, 1)
    meta = pd.DataFrame({"site": np.array(["a", "b"])[rng.integers(0, 2, n)]})
    out = subgroup_analysis("binary", y, np.stack([1 - s, s], 1), meta, ["site"], class_names=["n", "p"],
                            positive_index=1, n_resamples=100, n_permutations=300)
    assert out["columns"]["site"]["largest_gap"]["p_value"] > 0.05


def test_unknown_columns_and_missing_metadata_are_one_line_errors():
    meta = pd.DataFrame({"gender": ["F", "M"]})
    with pytest.raises(ConfigError, match=r"no metadata column 'gnder'. Did you mean 'gender'"):
        subgroup_labels(meta, ["gnder"])
    with pytest.raises(ConfigError, match="carries no metadata"):
        subgroup_labels(None, ["gender"])


@pytest.mark.slow
def test_subgroups_on_the_btxrd_fixture_reach_report_card_and_metrics(tmp_path, pneumonia_arrays):
    from medcls import evaluate, train
    from medcls.testing.multimodal import write_btxrd_like

    xlsx, _ = write_btxrd_like(tmp_path / "BTXRD", pneumonia_arrays["train_images"], n=300)
    cfg = {"name": "btx", "output_dir": str(tmp_path / "runs"),
           "data": {"source": f"btxrd:{xlsx.parent}", "min_val_size": 8, "test_fraction": 0.4},
           "transforms": {"image_size": 28, "strength": 0.0}, "model": {"name": "test_resnet"},
           "train": {"epochs": 1, "batch_size": 32, "progress": False, "amp": "off"},
           "eval": {"n_bootstrap": 50, "subgroups": ["gender", "center", "age"]}}
    run = train(cfg)
    evaluate(run, "test", device="cpu")
    m = json.loads((run.path / "eval-test" / "metrics.json").read_text())["subgroups"]["columns"]
    assert set(m) == {"gender", "center", "age"} and {g["group"] for g in m["gender"]["groups"]} == {"F", "M"}
    assert m["gender"]["metrics"] == ["auc", "accuracy", "balanced_accuracy"]  # BTXRD is 3-class
    assert sum(g["n"] for g in m["center"]["groups"]) == 120 and m["gender"]["largest_gap"] is not None
    report = (run.path / "eval-test" / "report.html").read_text()
    card = (run.path / "eval-test" / "model_card.md").read_text()
    assert 'id="subgroups"' in report and "<h3>gender</h3>" in report and "Largest AUC gap" in report
    assert "## Subgroup performance" in card and "**center**" in card
    with pytest.raises(ConfigError, match="no metadata column 'sex'"):  # refused before training, not after
        train({**cfg, "eval": {**cfg["eval"], "subgroups": ["sex"]}})
