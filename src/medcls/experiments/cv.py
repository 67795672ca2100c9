"""k-fold cross-validation on the development set (train + val); the test split is not read.

Fold assignment: ``StratifiedKFold`` on the class (multilabel: on the argmax of
the multi-hot label, i.e. the first positive label), or ``StratifiedGroupKFold``
when the source has group (patient) ids, so that no group is split across folds.

For fold ``i`` the held-out fold is the validation split of that fold's run
(best checkpoint, temperature, operating point) and is also scored for the
out-of-fold predictions; those scores are therefore slightly optimistic. With
``inner_val`` an inner validation split is carved from the training folds
instead and the held-out fold is scored untouched.

Layout::

    runs/<name>-cv-<k>-<time>/
      folds.csv                 fold of every development sample (id, dev_index, source_split, fold)
      fold-0/ ... fold-<k-1>/   normal run directories (``medcls.load_run``), fold.json, eval-oof/
      oof_predictions.csv       id, fold, label, probability per class (calibrated per fold)
      cv_summary.json / .csv    every metric per fold, mean ± sd (ddof=1), pooled out-of-fold metrics
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import Config, build_config
from ..data.sources import LoadedData, load_data
from ..data.splits import ConcatTable, split_indices, strata
from ..errors import ConfigError
from ..evaluation.result import EvalResult
from ..metrics import compute_metrics, flat_metrics, headline_subset
from ..reports.kit import fmt
from ..runs import Run, new_run_dir
from ..utils import atomic_write_json, atomic_write_text
from ._common import HeldOutTable, as_config, dev_set, mean_sd

log = logging.getLogger("medcls")

TEST_NOT_READ = "test split not read by cv (use --evaluate-test to score each fold model on it)"
OPTIMISTIC = ("out-of-fold scores are computed on the fold that also chose each run's best checkpoint, "
              "temperature and operating point: slightly optimistic (use --inner-val to avoid this)")


@dataclass
class CVResult:
    """What :func:`cv` wrote: the folder, fold runs, per-fold and pooled metrics, OOF predictions."""

    path: Path
    runs: list[Run]
    per_fold: list[dict[str, float]]
    summary: dict[str, dict[str, float]]
    pooled: dict[str, float]
    oof: pd.DataFrame
    test: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def make_folds(labels: np.ndarray, folds: int, *, seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold number (0..folds-1) of every sample; stratified, and by group when ``groups`` is given."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = strata(labels)
    check_folds(y, folds, groups)
    idx = np.arange(len(y))
    if groups is not None:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(idx, y, groups)
    else:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(idx, y)
    fold = np.full(len(y), -1, dtype=np.int64)
    for k, (_, held) in enumerate(splitter):
        fold[held] = k
    return fold


def check_folds(y: np.ndarray, folds: int, groups: np.ndarray | None) -> None:
    """``folds`` must be >= 2 and no larger than the smallest class (counted in groups when ids exist)."""
    if not isinstance(folds, int | np.integer) or folds < 2:
        raise ConfigError(f"--folds must be an integer >= 2, got {folds!r}")
    present = np.unique(y)
    if groups is None:
        per_class = {int(c): int((y == c).sum()) for c in present}
        unit = "samples"
    else:
        groups = np.asarray(groups)
        per_class = {int(c): len(np.unique(groups[y == c])) for c in present}
        unit = "groups (patients)"
        if len(np.unique(groups)) < folds:
            raise ConfigError(f"--folds {folds} needs at least {folds} distinct group ids, "
                              f"the development set has {len(np.unique(groups))}")
    smallest = min(per_class, key=per_class.get)
    if per_class[smallest] < folds:
        raise ConfigError(f"--folds {folds} is larger than the smallest class (class index {smallest} has "
                          f"{per_class[smallest]} {unit}); use --folds <= {per_class[smallest]}")


def _fold_data(data: LoadedData, dev: ConcatTable, fold: np.ndarray, k: int, inner_val: float | None,
               seed: int) -> tuple[LoadedData, str]:
    """(LoadedData of fold ``k``, name of the split in it that holds the held-out fold)."""
    train_idx, held_idx = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
    train, held = dev.subset(train_idx), dev.subset(held_idx)
    if inner_val:
        keep, ival = split_indices(train.labels, inner_val, seed=seed + 1, groups=train.groups)
        note = (f"cv fold {k}: train = other folds minus an inner val of {len(ival)} ({inner_val:.0%}); "
                f"the held-out fold ({len(held)}) is scored untouched")
        return LoadedData(data.spec, train.subset(keep), train.subset(ival), held, [note]), "test"
    note = f"cv fold {k}: train = other folds ({len(train)}), val = held-out fold ({len(held)})"
    return LoadedData(data.spec, train, held, HeldOutTable(train, TEST_NOT_READ), [note]), "val"


def _prob_frame(result: EvalResult) -> pd.DataFrame:
    """Labels and calibrated probabilities of the held-out cases, as columns of oof_predictions.csv."""
    names = list(result.class_names)
    cols = [f"true_{c}" for c in names] if result.task == "multilabel" else ["label"]
    return result.frame()[cols + [f"prob_{c}" for c in names]]


def _notes(cfg: Config, folds: int, dev, task: str, inner_val: float | None, evaluate_test: bool) -> list[str]:
    """How the folds were made and what the out-of-fold scores mean (logged and written to the summary)."""
    how = "StratifiedGroupKFold (by group id)" if dev.groups is not None else "StratifiedKFold"
    return [f"{folds}-fold {how} on train + val ({len(dev)} samples); seed {cfg.seed}"
            + ("; multilabel: stratified on the first positive label" if task == "multilabel" else ""),
            TEST_NOT_READ if not evaluate_test else "test split: each fold model evaluated once (--evaluate-test)",
            ("out-of-fold scores: held-out folds untouched by training and model selection "
             f"(inner val = {inner_val:.0%} of the training folds)") if inner_val else OPTIMISTIC]


@dataclass
class _Fold:
    run: Run
    row: dict[str, Any]
    frame: pd.DataFrame
    test_row: dict[str, Any] | None


def _run_fold(cfg: Config, data: LoadedData, dev: ConcatTable, fold: np.ndarray, k: int, folds: int, root: Path,
              inner_val: float | None, real_test) -> _Fold:
    """Train fold ``k`` on the other folds, score its held-out fold (and the real test split when asked)."""
    from ..api import evaluate, train

    fdata, scored = _fold_data(data, dev, fold, k, inner_val, cfg.seed)
    held_idx = np.flatnonzero(fold == k)
    log.info("fold %d/%d: train %d, val %d, scored %d", k + 1, folds, len(fdata.train), len(fdata.val), len(held_idx))
    run = train(build_config({**cfg.to_dict(), "name": f"{cfg.name}-fold{k}"}), data=fdata, run_dir=root / f"fold-{k}")
    atomic_write_json(run.path / "fold.json", {
        "fold": k, "folds": folds, "seed": cfg.seed, "scored_split": scored, "inner_val": inner_val,
        "n_train": len(fdata.train), "n_val": len(fdata.val), "n_scored": len(held_idx),
        **({"inner_val_ids": fdata.val.ids} if inner_val else {}), "assignment": "../folds.csv"})
    m = evaluate(run, split=scored, data=fdata, out_dir=run.path / "eval-oof")
    best = run.metrics().get("train", {})
    row = {"fold": k, "n": len(held_idx), "best_epoch": best.get("best_epoch"), **flat_metrics(m)}
    frame = pd.concat([pd.DataFrame({"id": [dev.ids[i] for i in held_idx], "dev_index": held_idx,
                                     "source_split": [("train", "val")[s] for s in dev.part_of[held_idx]],
                                     "fold": k}), _prob_frame(m.align(dev.subset(held_idx).ids))], axis=1)
    test_row = None
    if real_test is not None:
        tdata = LoadedData(data.spec, fdata.train, fdata.val, real_test, fdata.notes)
        tm = evaluate(run, split="test", data=tdata, out_dir=run.path / "eval-test")
        test_row = {"fold": k, "n": len(real_test), **flat_metrics(tm)}
    return _Fold(run, row, frame, test_row)


def cv(config: Config | str | Path | dict | None = None, folds: int = 5, *, overrides: list[str] | None = None,
       seed: int | None = None, inner_val: float | None = None, evaluate_test: bool = False,
       run_dir: str | Path | None = None) -> CVResult:
    """Stratified (group-aware) k-fold cross-validation of ``config`` on train + val; see the module doc."""
    cfg = as_config(config, list(overrides or []) + ([f"seed={seed}"] if seed is not None else []))
    if not isinstance(folds, int | np.integer) or folds < 2:
        raise ConfigError(f"--folds must be an integer >= 2, got {folds!r}")
    if inner_val is not None and not 0 < inner_val < 1:
        raise ConfigError(f"--inner-val must be a fraction in (0, 1), got {inner_val}")
    data = load_data(cfg.data)
    dev = dev_set(data)
    fold = make_folds(dev.labels, folds, seed=cfg.seed, groups=dev.groups)
    root = new_run_dir(cfg.output_dir, f"{cfg.name}-cv-{folds}", run_dir)
    atomic_write_text(root / "folds.csv", pd.DataFrame({
        "id": dev.ids, "dev_index": np.arange(len(dev)), "source_split": [("train", "val")[s] for s in dev.part_of],
        "fold": fold}).to_csv(index=False))
    names, task, pos = list(data.spec.class_names), data.spec.task, data.spec.positive_index
    notes = _notes(cfg, folds, dev, task, inner_val, evaluate_test)
    for n in notes:
        log.info(n)
    done = [_run_fold(cfg, data, dev, fold, k, folds, root, inner_val, data.test if evaluate_test else None)
            for k in range(folds)]
    per_fold, test_rows = [f.row for f in done], [f.test_row for f in done if f.test_row is not None]
    oof = pd.concat([f.frame for f in done], ignore_index=True).sort_values("dev_index", kind="stable")
    oof = oof.reset_index(drop=True)
    atomic_write_text(root / "oof_predictions.csv", oof.to_csv(index=False))
    probs = oof[[f"prob_{c}" for c in names]].to_numpy()
    y = (oof[[f"true_{c}" for c in names]].to_numpy() if task == "multilabel"
         else np.asarray([names.index(v) for v in oof["label"]]))
    pooled = flat_metrics(compute_metrics(task, y, probs, class_names=names, positive_index=pos,
                                          threshold=cfg.eval.threshold))
    summary = _summarise(per_fold)
    test = {"per_fold": test_rows, "summary": _summarise(test_rows)} if test_rows else None
    _write_summary(root, folds, per_fold, summary, pooled, test, notes)
    return CVResult(root, [f.run for f in done], per_fold, summary, pooled, oof, test, notes)


def _summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and k not in ("fold", "n")]
    return {k: mean_sd([float("nan") if r.get(k) is None else r[k] for r in rows]) for k in keys}


def _write_summary(root: Path, folds: int, per_fold: list[dict], summary: dict, pooled: dict,
                   test: dict | None, notes: list[str]) -> None:
    atomic_write_json(root / "cv_summary.json", {
        "folds": folds, "notes": notes, "sd": "sample standard deviation (ddof=1) over folds",
        "per_fold": per_fold, "mean_sd": summary, "pooled_oof": pooled, **({"test": test} if test else {})})
    rows = [{"row": f"fold-{r['fold']}", **{k: v for k, v in r.items() if k != "fold"}} for r in per_fold]
    rows += [{"row": "mean", **{k: v["mean"] for k, v in summary.items()}},
             {"row": "sd", **{k: v["sd"] for k, v in summary.items()}},
             {"row": "pooled_oof", **pooled}]
    if test:
        rows += [{"row": f"test-fold-{r['fold']}", **{k: v for k, v in r.items() if k != "fold"}} for r in test["per_fold"]]
        rows += [{"row": "test-mean", **{k: v["mean"] for k, v in test["summary"].items()}},
                 {"row": "test-sd", **{k: v["sd"] for k, v in test["summary"].items()}}]
    atomic_write_text(root / "cv_summary.csv", pd.DataFrame(rows).to_csv(index=False))


SHOWN = headline_subset("auc", "ap", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "macro_f1")


def print_summary(result: CVResult) -> None:
    """A rich table: one row per metric; one column per fold, mean ± sd, pooled out-of-fold (and test)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(result.runs)}-fold cross-validation (out-of-fold)")
    table.add_column("metric")
    for r in result.per_fold:
        table.add_column(f"fold {r['fold']}", justify="right")
    table.add_column("mean ± sd", justify="right", style="bold")
    table.add_column("pooled", justify="right")
    if result.test:
        table.add_column("test mean ± sd", justify="right", style="bold")
    ms, ts = result.summary, (result.test or {}).get("summary", {})
    table.add_row("n", *[str(r["n"]) for r in result.per_fold], str(sum(r["n"] for r in result.per_fold)),
                  str(len(result.oof)), *([str(result.test["per_fold"][0]["n"])] if result.test else []))
    table.add_row("best epoch", *[fmt(r.get("best_epoch"), dash="") for r in result.per_fold], "", "",
                  *([""] if result.test else []))
    for c in (c for c in SHOWN if c in ms):
        test_cell = [f"{fmt(ts[c]['mean'])} ± {fmt(ts[c]['sd'])}" if c in ts else ""] if result.test else []
        table.add_row(c, *[fmt(r.get(c), dash="") for r in result.per_fold],
                      f"{fmt(ms[c]['mean'])} ± {fmt(ms[c]['sd'])}", fmt(result.pooled.get(c), dash=""), *test_cell)
    console = Console()
    console.print(table)
    for n in result.notes:
        console.print(f"note: {n}")
