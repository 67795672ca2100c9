"""Source registry: ``data.source: 'kind:argument'`` -> :class:`SourceData`.

A source function takes the argument string and its keyword options and returns
the spec and whatever official splits it has; :func:`load_data` fills in the
missing splits (stratified, by group when group ids exist).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, did_you_mean
from ..registry import Registry
from .spec import DatasetSpec
from .splits import split_indices
from .table import ImageTable

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class SourceData:
    spec: DatasetSpec
    splits: dict[str, ImageTable | None]
    notes: list[str] | None = None


SourceFn = Callable[..., SourceData]
SOURCES: Registry[SourceFn] = Registry("data source", ConfigError)


def default_data_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Lookup order: explicit ``data_dir``, then ``$MEDCLS_DATA_DIR``, then ``./data``."""
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get("MEDCLS_DATA_DIR"):
        dirs.append(Path(os.environ["MEDCLS_DATA_DIR"]).expanduser())
    dirs.append(Path("data"))
    return dirs


def parse_source(source: str) -> tuple[str, str]:
    kind, sep, arg = source.partition(":")
    if not sep or not arg:
        raise ConfigError(
            f"data.source must look like 'kind:argument' (e.g. medmnist:pneumoniamnist, folder:/data/chest_xray), "
            f"got {source!r}. Kinds: {', '.join(SOURCES)}"
        )
    return kind.strip(), arg.strip()


def _call_source(kind: str, arg: str, data_dir: str | None, options: dict, strict: bool = False) -> SourceData:
    fn = SOURCES.get(kind)
    params = inspect.signature(fn).parameters
    valid = [p for p in params if p not in ("arg", "data_dir", "table")]  # table: Python callers only
    for key in options:
        if key not in valid:
            raise ConfigError(
                f"data.options.{key} is not an option of source {kind!r}.{did_you_mean(key, valid)} "
                f"Options: {', '.join(valid) or 'none'}"
            )
    kwargs = dict(options)
    if "strict" in params and strict and "strict" not in kwargs:
        kwargs["strict"] = True
    if "data_dir" in params:
        kwargs["data_dir"] = data_dir
    try:
        return fn(arg, **kwargs)
    except TypeError as e:  # wrong option type
        raise ConfigError(f"source {kind!r}: bad options {options}: {e}") from None


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
    src = _call_source(kind, arg, data_cfg.data_dir, dict(data_cfg.options), data_cfg.strict)
    spec = src.spec.with_positive_class(data_cfg.positive_class)
    notes = list(src.notes or [])
    train = src.splits.get("train")
    if train is None or len(train) == 0:
        raise DataError(f"{data_cfg.source}: no training samples found")
    val, test = src.splits.get("val"), src.splits.get("test")
    seed = data_cfg.split_seed
    splits_file = getattr(data_cfg, "splits_file", None)
    if splits_file:
        from .splits import apply_splits_file

        fixed = apply_splits_file(src.splits, splits_file, spec.class_names)
        train, val, test = fixed["train"], fixed["val"], fixed["test"]
        from ..utils import file_md5

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


# Register the built-in sources (import for side effects).
from . import btxrd as _btxrd  # noqa: E402,F401
from . import dicom_source as _dicom  # noqa: E402,F401
from . import folder as _folder  # noqa: E402,F401
from . import hdf5 as _hdf5  # noqa: E402,F401
from . import manifest as _manifest  # noqa: E402,F401
from . import medmnist as _medmnist  # noqa: E402,F401
