"""Each plot function writes a valid, non-trivial PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medcls.errors import ConfigError, DataError
from medcls.reports.plots import plot_confusion, plot_history, plot_pr, plot_roc


def _check_png(path, min_px: int = 200) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        assert min(im.size) >= min_px


def _data(task: str, k: int, n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    if task == "multilabel":
        y = (rng.random((n, k)) < 0.3).astype(int)
        y[0], y[1] = 0, 1
        return y, 1 / (1 + np.exp(-(rng.normal(size=(n, k)) + 2 * y - 1)))
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


@pytest.mark.parametrize("plot", [plot_roc, plot_pr])
@pytest.mark.parametrize(("task", "k"), [("binary", 2), ("multiclass", 4), ("multilabel", 3),
                                         ("multiclass", 12)])
def test_curve_plots(tmp_path, plot, task, k):
    y, probs = _data(task, k)
    names = [f"class {i}" for i in range(k)]
    out = plot(tmp_path / "sub" / f"{plot.__name__}.png", y, probs, task=task, class_names=names,
               positive_index=0 if task == "binary" else None)
    _check_png(out)


def test_curve_plot_skips_class_without_positives(tmp_path):
    y, probs = _data("multiclass", 3)
    y[y == 2] = 0
    _check_png(plot_roc(tmp_path / "roc.png", y, probs, task="multiclass", class_names="abc"))
    _check_png(plot_pr(tmp_path / "pr.png", y, probs, task="multiclass", class_names="abc"))


def test_curve_plot_errors(tmp_path):
    y, probs = _data("multiclass", 3)
    with pytest.raises(ConfigError, match="Did you mean 'binary'"):
        plot_roc(tmp_path / "x.png", y, probs, task="binar", class_names="abc")
    with pytest.raises(DataError, match=r"expected probs of shape \(N, 2\), got \(120, 3\)"):
        plot_roc(tmp_path / "x.png", y, probs, task="binary", class_names="ab")


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("k", [2, 7])
def test_plot_confusion(tmp_path, normalize, k):
    rng = np.random.default_rng(k)
    cm = rng.integers(0, 50, (k, k))
    cm[-1] = 0  # an empty row must not divide by zero
    _check_png(plot_confusion(tmp_path / "cm.png", cm, [f"c{i}" for i in range(k)], normalize=normalize))


def test_plot_confusion_shape_error(tmp_path):
    with pytest.raises(DataError, match=r"expected cm of shape \(3, 3\)"):
        plot_confusion(tmp_path / "cm.png", np.eye(2), ["a", "b", "c"])


def test_plot_history(tmp_path):
    rows = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1) + 0.05,
             "val_auc": 0.6 + 0.03 * e, "val_accuracy": 0.5 + 0.04 * e, "lr": 1e-3}
            for e in range(8)]
    rows[3]["val_loss"] = float("nan")
    rows.append({"epoch": 8, "train_loss": 0.1})  # last epoch without validation
    _check_png(plot_history(tmp_path / "history.png", rows))
    _check_png(plot_history(tmp_path / "history_auc.png", rows, metrics=["val_auc"]))
    with pytest.raises(DataError, match="empty"):
        plot_history(tmp_path / "none.png", [])
