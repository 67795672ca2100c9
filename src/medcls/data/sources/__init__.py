"""Data sources: ``data.source: 'kind:argument'`` -> train/val/test tables and the :class:`DatasetSpec`.

A source function (one module per kind, registered in :mod:`.registry`) takes the
argument string and its keyword options and returns the spec and whatever official
splits it has; :func:`load_data` fills in the missing splits (stratified, by group
when group ids exist).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ...errors import DataError
from ..spec import DatasetSpec
from ..splits import split_indices
from ..table import ImageTable
from . import btxrd as _btxrd  # noqa: F401  (each source module registers itself)
from . import dicom as _dicom  # noqa: F401
from . import folder as _folder  # noqa: F401
from . import hdf5 as _hdf5  # noqa: F401
from . import manifest as _manifest  # noqa: F401
from . import medmnist as _medmnist  # noqa: F401
from .registry import SOURCES, SPLITS, SourceData, call_source, default_data_dirs, parse_options, parse_source

__all__ = ["SOURCES", "SPLITS", "LoadedData", "SourceData", "call_source", "default_data_dirs", "load_data",
           "parse_options", "parse_source"]

log = logging.getLogger(__name__)


@dataclass
class LoadedData:
    spec: DatasetSpec
    train: ImageTable
    val: ImageTable
    test: ImageTable
    notes: list[str]

    def split(self, name: str) -> ImageTable:
        if name not in SPLITS:
            raise DataError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
        return getattr(self, name)

    def summary(self) -> dict:
        out = {}
        for s in SPLITS:
            t = self.split(s)
            lab = t.labels
            counts = lab.sum(0) if lab.ndim == 2 else np.bincount(lab, minlength=self.spec.num_classes)
            out[s] = {"n": len(t), "per_class": dict(zip(self.spec.class_names, counts.astype(int).tolist(), strict=True))}
        return out


def _limit(table: ImageTable, limit: int | None, seed: int) -> ImageTable:
    if limit is None or len(table) <= limit:
        return table
    _, held = split_indices(table.labels, limit / len(table), seed=seed)
    return table.subset(held[:limit])


def load_data(data_cfg) -> LoadedData:
    """Load the configured source and return train/val/test tables and the spec."""
    kind, arg = parse_source(data_cfg.source)
    src = call_source(kind, arg, data_cfg.data_dir, dict(data_cfg.options), data_cfg.strict)
    spec = src.spec.with_positive_class(data_cfg.positive_class)
    notes = list(src.notes or [])
    train = src.splits.get("train")
    if train is None or len(train) == 0:
        raise DataError(f"{data_cfg.source}: no training samples found")
    val, test = src.splits.get("val"), src.splits.get("test")
    seed = data_cfg.split_seed
    splits_file = getattr(data_cfg, "splits_file", None)
    if splits_file:
        from ..splits import apply_splits_file

        fixed = apply_splits_file(src.splits, splits_file, spec.class_names)
        train, val, test = fixed["train"], fixed["val"], fixed["test"]
        from ...utils import file_md5

        notes.append(f"splits from {splits_file} (md5 {file_md5(splits_file)}): {len(train)}/{len(val)}/{len(test)} "
                     "train/val/test")
    elif test is None or len(test) == 0:
        keep, held = split_indices(train.labels, data_cfg.test_fraction, seed=seed, groups=train.groups)
        train, test = train.subset(keep), train.subset(held)
        notes.append(f"no test split: held out {len(test)} of train ({data_cfg.test_fraction:.0%}, "
                     f"{'by group' if train.groups is not None else 'stratified'})")
    if not splits_file and (val is None or len(val) < data_cfg.min_val_size):
        had = 0 if val is None else len(val)
        keep, held = split_indices(train.labels, data_cfg.val_fraction, seed=seed + 1, groups=train.groups)
        train, val = train.subset(keep), train.subset(held)
        notes.append(f"val split had {had} samples (< data.min_val_size={data_cfg.min_val_size}): rebuilt "
                     f"{len(val)} from train ({'by group' if train.groups is not None else 'stratified'})")
    if data_cfg.limit:
        train, val, test = (_limit(t, data_cfg.limit, seed) for t in (train, val, test))
    for n in notes:
        log.info(n)
    return LoadedData(spec, train, val, test, notes)
