"""Error mining: Grad-CAM figures of the most confident errors of an evaluated split, under
``RUN/eval-<split>/gradcam/`` (``medcls evaluate --gradcam-errors K``)."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..evaluation import EvalResult, evaluate_run, read_predictions
from ..runs import Run
from .cam import check_method, choose_layer, compute_cam, layer_label
from .figures import save_explanation

log = logging.getLogger("medcls")


def _decision_threshold(run: Run, checkpoint: str) -> float:
    """The operating point ``predict`` uses for ``checkpoint`` (its calibration), else eval.threshold."""
    post = run.postprocess(checkpoint)
    return float(post.threshold if post is not None else run.config.eval.threshold)


def _select_errors(result: EvalResult, k: int, threshold: float) -> dict[str, np.ndarray]:
    """Row indices of the ``k`` most confident errors per group, most confident first."""
    names, y, pred = list(result.class_names), result.labels, result.predicted(threshold)
    if result.task == "binary":
        pos = result.positive_index
        p = result.probs[:, pos]
        fp = np.flatnonzero((y != pos) & (pred == pos))
        fn = np.flatnonzero((y == pos) & (pred != pos))
        return {"FP": fp[np.argsort(-p[fp], kind="stable")][:k], "FN": fn[np.argsort(p[fn], kind="stable")][:k]}
    conf = result.probs.max(1)
    out = {}
    for c in range(len(names)):
        wrong = np.flatnonzero((y == c) & (pred != c))
        out[names[c]] = wrong[np.argsort(-conf[wrong], kind="stable")][:k]
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "x"


def _evaluated(run: Run, split: str, checkpoint: str) -> EvalResult:
    """The stored predictions of ``split`` (evaluated first when there are none)."""
    path = run.path / f"eval-{split}" / "predictions.csv"
    if not path.is_file():
        return evaluate_run(run, split, checkpoint=checkpoint)
    spec = run.dataset
    return read_predictions(path, class_names=spec.class_names, task=spec.task, positive_index=spec.positive_index)


class _Explainer:
    """Grad-CAM figures of cases of one split, the layer chosen (and warned about) on the first case."""

    def __init__(self, run: Run, split: str, checkpoint: str, method: str, layer: str | None) -> None:
        from ..data.sources import load_data

        self.run, self.split, self.method, self.layer = run, split, method, layer
        self.table = load_data(run.config.data).split(split)
        self.index = {cid: i for i, cid in enumerate(self.table.ids)}
        self.model, _ = run.build_model(checkpoint)
        self.grid: tuple[int, int] | None = None
        self.chosen = False

    def save(self, cid: str, target: int, path: Path, title: str) -> None:
        run, pre = self.run, self.run.preprocess
        if cid not in self.index:
            raise DataError(f"case {cid!r} of predictions.csv is not in the {self.split} split any more "
                            f"(data changed since evaluation?); re-run `medcls evaluate`")
        i = self.index[cid]
        x = pre(self.table.load(i, draft=pre.draft)).unsqueeze(0)
        side = run.inputs.encode_table(self.table.subset([i]), f"{self.split} split") if run.inputs else None
        if not self.chosen:  # the input size is the same for every case
            self.layer, self.grid = choose_layer(self.model, x, self.layer, side)
            self.chosen = True
        cam = compute_cam(self.model, x, method=self.method, target_class=target, layer=self.layer, side_inputs=side)[0]
        at = f" · {layer_label(self.layer)} ({self.grid[0]}x{self.grid[1]})" if self.grid else ""
        save_explanation(path, x[0].permute(1, 2, 0).numpy(), cam, title + at)


def mine_errors(run: Run, split: str = "test", *, k: int = 8, method: str = "gradcam", checkpoint: str = "best",
                layer: str | None = None, result: EvalResult | None = None) -> list[dict[str, Any]]:
    """Grad-CAM figures of the ``k`` most confident errors per group under ``RUN/eval-<split>/gradcam/``.

    Binary: false positives (``FP/``, highest p(positive)) and false negatives (``FN/``, lowest
    p(positive)) at the checkpoint's decision threshold (its calibration, else ``eval.threshold``). Multiclass: per true
    class (``<class>/``). The CAM explains the predicted class. An existing ``gradcam/`` is replaced. ``result``: the
    evaluation of ``split`` (default: its stored predictions, evaluated first when there are none).
    """
    import pandas as pd

    check_method(method)
    if run.dataset.task == "multilabel":
        raise ConfigError("Grad-CAM error mining supports binary and multiclass runs, not multilabel")
    result = result if result is not None else _evaluated(run, split, checkpoint)
    threshold = _decision_threshold(run, checkpoint)
    groups = _select_errors(result, k, threshold)
    root = run.path / f"eval-{split}" / "gradcam"
    shutil.rmtree(root, ignore_errors=True)
    if not any(len(g) for g in groups.values()):
        log.info("no errors on %s to explain", split)
        return []
    explainer, names, written = _Explainer(run, split, checkpoint, method, layer), list(result.class_names), []
    pred = result.predicted(threshold)
    for group, rows in groups.items():
        for rank, i in enumerate(rows, 1):
            cid, label, predicted = result.ids[i], names[result.labels[i]], names[pred[i]]
            prob = float(result.probs[i, pred[i]])
            path = root / _safe(group) / f"{rank:02d}_{_safe(cid)}.png"
            explainer.save(cid, int(pred[i]), path,
                           f"{group} · {cid} · true {label} · predicted {predicted} (p = {prob:.3f})")
            written.append({"id": cid, "group": group, "label": label, "predicted": predicted,
                            "probability": prob, "path": str(path)})
    pd.DataFrame(written).to_csv(root / "cases.csv", index=False)
    log.debug("Grad-CAM of %d errors written to %s", len(written), root)
    return written
