"""Error mining: which cases are chosen, and the gallery written under eval-<split>/gradcam/."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from medcls.evaluation import EvalResult
from medcls.explain import mine_errors
from medcls.explain.mining import _select_errors

from .conftest import one_thread


def test_error_selection_binary_and_multiclass():
    ids = [f"test/{i}" for i in range(6)]
    p_pos = np.array([0.9, 0.65, 0.2, 0.1, 0.38, 0.7])
    binary = EvalResult({}, ids, np.array([0, 0, 0, 1, 1, 1]), np.c_[1 - p_pos, p_pos], ("neg", "pos"), "binary",
                        positive_index=1)
    g = _select_errors(binary, 5, 0.6)  # decision threshold 0.6, not 0.5
    assert [ids[i] for i in g["FP"]] == ["test/0", "test/1"] and [ids[i] for i in g["FN"]] == ["test/3", "test/4"]
    assert [ids[i] for i in _select_errors(binary, 1, 0.6)["FN"]] == ["test/3"]  # lowest p(positive) first
    probs = np.array([[0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.5, 0.4, 0.1], [0.2, 0.1, 0.7]])
    multi = EvalResult({}, ["a", "b", "c", "d"], np.array([0, 0, 1, 2]), probs, ("x", "y", "z"), "multiclass")
    g = _select_errors(multi, 5, 0.5)
    assert g["x"].tolist() == [0, 1] and g["y"].tolist() == [2] and multi.predicted()[2] == 0 and not len(g["z"])


def test_mine_errors_writes_fp_fn(tiny_run):
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("error")  # the 7x7 layer is chosen without a coarse-map warning
        cases = mine_errors(tiny_run, "test", k=2)  # evaluates first: no predictions.csv yet
    root = tiny_run.path / "eval-test" / "gradcam"
    df = pd.read_csv(tiny_run.path / "eval-test" / "predictions.csv")
    assert cases, "the 2-epoch tiny run should make some errors"
    assert {c["group"] for c in cases} <= {"FP", "FN"} and len(cases) <= 4
    written = sorted(root.rglob("*.png"))
    assert len(written) == len(cases) and all(p.parent.name in ("FP", "FN") for p in written)
    for c in cases:
        row = df[df["id"] == c["id"]].iloc[0]
        assert row["label"] != c["predicted"]
        assert (c["group"] == "FN") == (row["label"] == "pneumonia")
    assert (root / "cases.csv").is_file()
