"""Error mining: which cases are chosen, and the gallery written under eval-<split>/gradcam/."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pandas as pd

from medcls.explain import mine_errors
from medcls.explain.mining import _select_errors

from .conftest import one_thread


def test_error_selection_binary_and_multiclass():
    df = pd.DataFrame({"id": [f"test/{i}" for i in range(6)], "label": ["neg", "neg", "neg", "pos", "pos", "pos"],
                       "prob_neg": [0.1, 0.35, 0.8, 0.9, 0.62, 0.3], "prob_pos": [0.9, 0.65, 0.2, 0.1, 0.38, 0.7]})
    binary = SimpleNamespace(spec=SimpleNamespace(class_names=["neg", "pos"], task="binary", positive_index=1))
    g = _select_errors(df, binary, 5, 0.6)  # decision threshold 0.6, not 0.5
    assert list(g["FP"]["id"]) == ["test/0", "test/1"] and list(g["FN"]["id"]) == ["test/3", "test/4"]
    assert list(_select_errors(df, binary, 1, 0.6)["FN"]["id"]) == ["test/3"]  # lowest p(positive) first
    df3 = pd.DataFrame({"id": ["a", "b", "c", "d"], "label": ["x", "x", "y", "z"], "prob_x": [0.1, 0.3, 0.5, 0.2],
                        "prob_y": [0.8, 0.6, 0.4, 0.1], "prob_z": [0.1, 0.1, 0.1, 0.7]})
    multi = SimpleNamespace(spec=SimpleNamespace(class_names=["x", "y", "z"], task="multiclass", positive_index=None))
    g = _select_errors(df3, multi, 5, 0.5)
    assert list(g["x"]["id"]) == ["a", "b"] and list(g["y"]["_pred"]) == ["x"] and g["z"].empty


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
