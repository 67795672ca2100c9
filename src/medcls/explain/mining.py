"""Error mining: Grad-CAM figures of the most confident errors of an evaluated split, under
``RUN/eval-<split>/gradcam/`` (``medcls evaluate --gradcam-errors K``)."""

from __future__ import annotations

import logging
import re
import shutil
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..runs import Run
from .cam import check_method, choose_layer, compute_cam, layer_label
from .figures import save_explanation

log = logging.getLogger("medcls")


def _decision_threshold(run: Run, checkpoint: str) -> float:
    """The operating point ``predict`` uses for ``checkpoint`` (its calibration), else eval.threshold."""
    post = run.postprocess(checkpoint)
    return float(post.threshold if post is not None else run.config.eval.threshold)


def _select_errors(df, run: Run, k: int, threshold: float) -> dict[str, Any]:
    names, spec = list(run.spec.class_names), run.spec
    if spec.task == "binary":
        pos = names[spec.positive_index]
        p = df[f"prob_{pos}"]
        df = df.assign(_pred=np.where(p >= threshold, pos, names[1 - spec.positive_index]))
        fp = df[(df["label"] != pos) & (p >= threshold)].sort_values(f"prob_{pos}", ascending=False).head(k)
        fn = df[(df["label"] == pos) & (p < threshold)].sort_values(f"prob_{pos}", ascending=True).head(k)
        return {"FP": fp, "FN": fn}
    probs = df[[f"prob_{c}" for c in names]].to_numpy()
    df = df.assign(_pred=[names[i] for i in probs.argmax(1)], _conf=probs.max(1))
    wrong = df[df["_pred"] != df["label"]]
    return {c: wrong[wrong["label"] == c].sort_values("_conf", ascending=False).head(k) for c in names}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "x"


def mine_errors(run: Run, split: str = "test", *, k: int = 8, method: str = "gradcam", checkpoint: str = "best",
                layer: str | None = None) -> list[dict[str, Any]]:
    """Grad-CAM figures of the ``k`` most confident errors per group under ``RUN/eval-<split>/gradcam/``.

    Binary: false positives (``FP/``, highest p(positive)) and false negatives (``FN/``, lowest
    p(positive)) at the checkpoint's decision threshold (its calibration, else ``eval.threshold``). Multiclass: per true
    class (``<class>/``). The CAM explains the predicted class. An existing ``gradcam/`` is replaced.
    """
    import pandas as pd

    from ..data.sources import load_data
    from ..evaluation import evaluate_run

    check_method(method)
    if run.spec.task == "multilabel":
        raise ConfigError("Grad-CAM error mining supports binary and multiclass runs, not multilabel")
    out = run.path / f"eval-{split}"
    if not (out / "predictions.csv").is_file():
        evaluate_run(run, split, checkpoint=checkpoint)
    df = pd.read_csv(out / "predictions.csv", dtype={"id": str, "label": str})
    threshold = _decision_threshold(run, checkpoint)
    groups = _select_errors(df, run, k, threshold)
    root = out / "gradcam"
    shutil.rmtree(root, ignore_errors=True)
    if not any(len(g) for g in groups.values()):
        log.info("no errors on %s to explain", split)
        return []
    table = load_data(run.config.data).split(split)
    index = {cid: i for i, cid in enumerate(table.ids)}
    model, _ = run.build_model(checkpoint)
    names, pre = list(run.spec.class_names), run.preprocess
    written: list[dict[str, Any]] = []
    chosen: tuple[str, tuple[int, int] | None] | None = None
    for group, rows in groups.items():
        for rank, r in enumerate(rows.to_dict("records"), 1):
            cid, pred = str(r["id"]), str(r["_pred"])
            if cid not in index:
                raise DataError(f"case {cid!r} of predictions.csv is not in the {split} split any more "
                                  f"(data changed since evaluation?); re-run `medcls evaluate`")
            x = pre(table.load(index[cid], draft=pre.draft)).unsqueeze(0)
            extras = run.inputs.encode_table(table.subset([index[cid]]), f"{split} split") if run.inputs else None
            if chosen is None:  # chosen (and warned about) on the first case: the input size is the same for all
                chosen = choose_layer(model, x, layer, extras)
            layer, grid = chosen
            cam = compute_cam(model, x, method=method, target_class=names.index(pred), layer=layer, extras=extras)[0]
            path = root / _safe(group) / f"{rank:02d}_{_safe(cid)}.png"
            prob = float(r[f"prob_{pred}"])
            at = f" · {layer_label(layer)} ({grid[0]}x{grid[1]})" if grid else ""
            save_explanation(path, x[0].permute(1, 2, 0).numpy(), cam,
                             f"{group} · {cid} · true {r['label']} · predicted {pred} (p = {prob:.3f}){at}")
            written.append({"id": cid, "group": group, "label": r["label"], "predicted": pred,
                            "probability": prob, "path": str(path)})
    pd.DataFrame(written).to_csv(root / "cases.csv", index=False)
    log.debug("Grad-CAM of %d errors written to %s", len(written), root)
    return written
