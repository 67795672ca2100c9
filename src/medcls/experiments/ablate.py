"""``medcls ablate``: image-only, metadata-only and every fusion trained on the same splits and seed.

The data are loaded once (so every variant sees exactly the same train/val/test rows),
each variant is trained with ``model.fusion`` set to it and evaluated on test. The table
(``ablation.csv``, ``.json``, ``.md`` in ``RUNS/<name>-ablation-<time>/``) holds the test AUC with
its 95% CI (DeLong for binary tasks, else stratified bootstrap), accuracy and balanced accuracy,
and each variant's AUC difference to image-only with a paired bootstrap CI and p-value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd

from ..choices import Fusion
from ..errors import ConfigError
from ..reports.kit import fmt, fmt_ci, md_table
from ..utils import atomic_write_json, atomic_write_text

log = logging.getLogger("medcls")

VARIANTS = get_args(Fusion)  # every model.fusion, image-only first
LABELS = {"none": "image only", "meta_only": "metadata only", "concat": "concat", "cross_attention": "cross-attention",
          "gated": "gated"}


@dataclass
class AblationResult:
    path: Path
    table: pd.DataFrame
    runs: dict[str, Path]


def _row(variant: str, metrics: dict[str, Any], inputs: str) -> dict[str, Any]:
    ci = metrics.get("auc_delong") or metrics.get("ci", {}).get("auc") or {}
    return {"variant": variant, "model": LABELS[variant], "inputs": inputs, "test_auc": metrics.get("auc"),
            "auc_low": ci.get("low"), "auc_high": ci.get("high"), "ci_method": ci.get("method", "bootstrap"),
            "accuracy": metrics.get("accuracy"), "balanced_accuracy": metrics.get("balanced_accuracy"),
            "n_test": metrics.get("n")}


def _inputs_text(cfg, variant: str) -> str:
    i = cfg.inputs
    extra = []
    if i.numeric or i.categorical:
        extra.append("metadata (" + ", ".join([*i.numeric, *i.categorical]) + ")")
    if i.text:
        extra.append(f"text ({i.text})")
    if variant == "none":
        return "image"
    return " + ".join(extra if variant == "meta_only" else ["image", *extra])


def ablate(config=None, *, overrides=None, variants=VARIANTS, run_dir: str | Path | None = None,
           n_bootstrap: int | None = None) -> AblationResult:
    """Train and evaluate every variant; write and return the comparison table."""
    from ..api import as_config, evaluate, train
    from ..config import build_config
    from ..data.sources import load_data
    from ..metrics import paired_bootstrap_diff
    from ..runs import new_run_dir

    cfg = as_config(config, overrides)
    if not cfg.inputs.columns:
        raise ConfigError("medcls ablate compares image-only, metadata-only and fused models: declare extra inputs "
                          "(inputs.numeric, inputs.categorical and/or inputs.text) in the config")
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ConfigError(f"ablation variants must be some of {', '.join(VARIANTS)}, got {list(variants)}")
    data = load_data(cfg.data)  # once: every variant trains and tests on the same rows
    root = new_run_dir(cfg.output_dir, f"{cfg.name}-ablation", run_dir)
    names = list(data.spec.class_names)
    rows, runs, preds = [], {}, {}
    for v in variants:
        raw = cfg.to_dict()
        raw["name"] = f"{cfg.name}-{v}"
        raw["model"]["fusion"] = v
        if n_bootstrap is not None:
            raw["eval"]["n_bootstrap"] = n_bootstrap
        log.info("ablation: training %s (%s)", LABELS[v], _inputs_text(cfg, v))
        run = train(build_config(raw), run_dir=root / v, data=data)
        result = evaluate(run, "test", data=data)
        runs[v] = run.path
        rows.append(_row(v, result.metrics, _inputs_text(cfg, v)))
        if data.spec.task != "multilabel":
            preds[v] = (result.labels, result.probs)  # every variant is tested on the same rows of `data`
    if "none" in preds:
        y, p0 = preds["none"]
        for r in rows:
            if r["variant"] == "none" or r["variant"] not in preds:
                continue
            d = paired_bootstrap_diff(y, p0, preds[r["variant"]][1], task=data.spec.task, class_names=names,
                                      positive_index=data.spec.positive_index, metrics=("auc",),
                                      n_resamples=max(200, cfg.eval.n_bootstrap), seed=cfg.seed)["auc"]
            r.update({"auc_vs_image": d["diff"], "diff_low": d["low"], "diff_high": d["high"], "p_value": d["p_value"]})
    table = pd.DataFrame(rows)
    atomic_write_text(root / "ablation.csv", table.to_csv(index=False))
    atomic_write_json(root / "ablation.json", {"config": cfg.to_dict(), "rows": rows,
                                               "runs": {k: str(p) for k, p in runs.items()},
                                               "splits": data.summary(), "seed": cfg.seed})
    atomic_write_text(root / "ablation.md", to_markdown(table, title=f"{cfg.name}: {data.spec.name}, "
                                                        f"test n = {len(data.test)}, seed {cfg.seed}"))
    log.info("ablation written to %s", root)
    return AblationResult(root, table, runs)


def to_markdown(table: pd.DataFrame, title: str = "") -> str:
    """``ablation.md``: one row per variant, test AUC with its CI and the AUC difference to image only."""
    rows = []
    for r in table.to_dict("records"):
        auc = fmt_ci({"value": r["test_auc"], "low": r["auc_low"], "high": r["auc_high"]}, dash="–")
        diff = "" if pd.isna(r.get("auc_vs_image", np.nan)) else fmt_ci(
            {"value": r["auc_vs_image"], "low": r["diff_low"], "high": r["diff_high"]}, dash="–", signed=True)
        p = "" if pd.isna(r.get("p_value", np.nan)) else fmt(r["p_value"], dash="–")
        rows.append([r["model"], r["inputs"], auc, fmt(r["accuracy"], dash="–"), fmt(r["balanced_accuracy"], dash="–"),
                     diff, p])
    header = ["model", "inputs", "test AUC [95% CI]", "accuracy", "balanced acc.", "ΔAUC vs image only [95% CI]", "p"]
    return "\n".join(([f"**{title}**", ""] if title else []) + md_table(header, rows)) + "\n"
