"""An external labelled source through the model: the source's tables, the site's labels matched to the model's
classes, then every image decoded and preprocessed as ``medcls predict`` does (the Predictor's own preprocessing
and model), giving raw logits, out-of-distribution scores and features, and each raw image's size and intensity."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..data.sources import SPLITS, call_source, parse_source
from ..errors import DataError
from ..inference import Predictor
from ..inference.batch import DecodeDataset, Inputs, batch_ranges, collate, error_text
from .labels import ClassMatch, check_counts, match_classes

STATS = ("height", "width", "channels", "intensity_mean", "intensity_std")


@dataclass
class External:
    """The labelled cases of a source that a model is validated on (labels: model class indices)."""

    source: str
    spec: Any  # the source's DatasetSpec
    inputs: Inputs
    labels: np.ndarray
    site_labels: list[str]
    meta: pd.DataFrame | None
    match: ClassMatch
    n_source: int
    notes: list[str] = field(default_factory=list)


def _tables(source: str, options: dict[str, Any], split: str, data_dir: str | None):
    if split not in ("all", *SPLITS):
        raise DataError(f"--split must be all or one of {', '.join(SPLITS)}, got {split!r}")
    kind, arg = parse_source(source)
    src = call_source(kind, arg, data_dir, dict(options or {}))
    tables = [t for s in SPLITS if split in ("all", s) and (t := src.splits.get(s)) is not None and len(t)]
    if not tables:
        raise DataError(f"{source}: no samples" + ("" if split == "all" else f" in split {split!r}"))
    if src.spec.task == "multilabel":
        raise DataError(f"{source} is a multi-label source: external validation takes one class per case")
    return src, tables


def load_external(source: str, class_names: list[str], *, options: dict[str, Any] | None = None, split: str = "all",
                  label_map: dict[str, str | None] | None = None, data_dir: str | None = None) -> External:
    """The cases of ``source`` (its ``split``, or all) with labels matched to ``class_names``; dropped labels'
    cases left out. A bare directory is a ``folder:`` source (class subfolders), as ``medcls predict`` takes one."""
    if ":" not in source and Path(source).is_dir():
        source = f"folder:{source}"
    src, tables = _tables(source, options or {}, split, data_dir)
    site_names = list(src.spec.class_names)
    match = match_classes(site_names, class_names, label_map, where=source)
    kept, labels, site_labels, metas = [], [], [], []
    for t in tables:
        mapped = match.apply(t.labels)
        rows = np.flatnonzero(mapped >= 0)
        kept.append(t.subset(rows) if len(rows) < len(t) else t)
        labels.append(mapped[rows])
        site_labels += [site_names[i] for i in np.asarray(t.labels)[rows]]
        metas.append(None if t.meta is None else t.meta.iloc[rows].reset_index(drop=True))
    y = np.concatenate(labels)
    check_counts(y, class_names, source)
    meta = pd.concat(metas, ignore_index=True) if all(m is not None for m in metas) else None
    n_source = sum(len(t) for t in tables)
    return External(source, src.spec, Inputs.of([t for t in kept if len(t)]), y, site_labels, meta, match, n_source,
                    list(src.notes or []) + match.notes)


def image_stats(img: np.ndarray) -> np.ndarray:
    """Height, width, channels, and mean and SD of the intensities scaled to [0, 1] (by the dtype's range)."""
    a = np.asarray(img)
    scale = float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else 1.0
    x = a.astype(np.float32) / scale
    return np.asarray([a.shape[0], a.shape[1], a.shape[2] if a.ndim == 3 else 1, x.mean(), x.std()], np.float64)


class StatsDataset(DecodeDataset):
    """Input ``i`` -> ``(i, preprocessed tensor, None, raw image statistics)``, or ``(i, None, message, None)``."""

    def __getitem__(self, i: int):
        try:
            img = self.inputs.load(i, draft=self.preprocess.draft)
            return i, self.preprocess(img), None, image_stats(img)
        except Exception as e:  # per-file boundary: an unreadable image is that case's error, not the run's
            return i, None, error_text(e), None


def _collate(items):
    """:func:`~medcls.inference.batch.collate`'s batch, and the statistics of the readable images."""
    return (*collate([item[:3] for item in items]), [s for *_, s in items if s is not None])


@dataclass
class Observed:
    """What the model made of the readable cases (``rows``: their positions in the inputs)."""

    rows: np.ndarray
    logits: np.ndarray
    ood_scores: np.ndarray | None
    features: np.ndarray | None
    stats: np.ndarray
    errors: list[str]


def _forward(pred: Predictor, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    if pred.ood is None:
        return pred.logits(x), None, None
    lg, f = pred.logits_and_features(x)
    return lg, pred.ood.score(f), f


def observe(pred: Predictor, inputs: Inputs, *, batch_size: int = 64, num_workers: int = 0) -> Observed:
    """Raw logits, OOD scores and features, and image statistics of every readable input (decoded in
    ``num_workers`` DataLoader processes, the model run here)."""
    loader = torch.utils.data.DataLoader(StatsDataset(inputs, pred.preprocess),
                                         batch_sampler=batch_ranges(0, len(inputs), batch_size),
                                         num_workers=num_workers, collate_fn=_collate)
    rows, logits, scores, feats, stats, errors = [], [], [], [], [], []
    for idx, x, errs, st in loader:
        errors += [f"{inputs.ids[i]}: {e}" for i, e in zip(idx, errs, strict=True) if e is not None]
        if x is None:
            continue
        lg, s, f = _forward(pred, x)
        rows += [i for i, e in zip(idx, errs, strict=True) if e is None]
        logits.append(lg)
        stats.append(np.stack(st))
        if s is not None:
            scores.append(s)
            feats.append(f)
    if not rows:
        raise DataError(f"none of the {len(inputs)} images could be read (first error: {errors[0]})")
    return Observed(np.asarray(rows, np.int64), np.concatenate(logits), np.concatenate(scores) if scores else None,
                    np.concatenate(feats) if feats else None, np.concatenate(stats), errors)
