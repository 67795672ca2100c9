"""The BTXRD bone-tumour radiograph dataset: ``btxrd:/path/to/BTXRD``.

``BTXRD/dataset.xlsx`` (one row per image, one-hot ``tumor``/``benign``/``malignant``)
and ``BTXRD/images/IMGxxxxxx.jpeg``. A thin layer over the ``csv`` source: labels
normal (neither set) / benign / malignant; ``center``, ``age``, ``gender``, the
anatomical ``site`` and the ``view`` (from their one-hot columns) are kept per
image in ``table.meta`` (a DataFrame aligned with the table's rows) for models
that use them. BTXRD has no patient id, so views of one patient may land in
different splits; ``split: center`` gives an external validation instead:
train/val from centre 1, test from centres 2 and 3 (``test_centers``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import ConfigError, DataError, did_you_mean
from ..spec import DatasetSpec
from ..splits import normalise_center
from ..table import FileTable
from . import manifest
from .registry import SOURCES, SourceData

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("tumor", "benign", "malignant")
CLASSES = ("normal", "benign", "malignant")
SITE_COLUMNS = ("hand", "ulna", "radius", "humerus", "foot", "tibia", "fibula", "femur", "hip bone", "ankle-joint",
                "knee-joint", "hip-joint", "wrist-joint", "elbow-joint", "shoulder-joint")
VIEW_COLUMNS = ("frontal", "lateral", "oblique")
META_COLUMNS = ("center", "age", "gender", "site", "view")
NO_PATIENT_IDS = ("BTXRD has no patient ids: views of one patient may land in different splits (leakage); "
                  "options.split=center gives an external validation by centre instead")


class MetaFileTable(FileTable):
    """Image files with per-image metadata (``meta`` required; any table may carry it, see :mod:`.table`)."""

    def __init__(self, paths, labels, ids=None, groups=None, *, meta: pd.DataFrame) -> None:
        super().__init__(paths, labels, ids, groups, meta=meta)


def _one_hot_names(df: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """``'femur'`` (or ``'femur+tibia'``, or ``''``) per row from one-hot columns that exist."""
    present = [c for c in columns if c in df.columns]
    if not present:
        return pd.Series([""] * len(df), index=df.index)
    flags = np.stack([manifest.binary_flags(df[c], c) for c in present], axis=1)
    return pd.Series(["+".join(c for c, f in zip(present, row, strict=True) if f) for row in flags], index=df.index)


def _check_labels(df: pd.DataFrame, path: Path) -> None:
    """Label columns present, at most one class per row, ``tumor`` consistent with benign/malignant."""
    missing = [c for c in ("image_id", *LABEL_COLUMNS) if c not in df.columns]
    if missing:
        hints = "".join(did_you_mean(c, df.columns) for c in missing)
        raise DataError(f"{path}: missing BTXRD column(s) {', '.join(map(repr, missing))} (image_id and the one-hot "
                        f"labels tumor, benign, malignant).{hints} Columns: {', '.join(map(str, df.columns))}")
    try:
        tumor, benign, malignant = (manifest.binary_flags(df[c], c) for c in LABEL_COLUMNS)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    both = benign & malignant
    if both.any():
        raise DataError(f"{path}: row(s) {manifest.row_numbers(both)} set both benign and malignant; each image has one "
                        "class (normal = neither)")
    bad = tumor != (benign | malignant)
    if bad.any():
        raise DataError(f"{path}: row(s) {manifest.row_numbers(bad)} disagree: tumor must be 1 exactly when benign or "
                        "malignant is 1")
    ids = df["image_id"].astype(str).str.strip()
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        raise DataError(f"{path}: image_id repeats in row(s) {manifest.row_numbers(dup)}")


def metadata(df: pd.DataFrame) -> pd.DataFrame:
    """center, age, gender, site, view per row (index: image_id)."""
    meta = pd.DataFrame(index=df["image_id"].astype(str).str.strip())
    for c in ("center", "age", "gender"):
        meta[c] = df[c].to_numpy() if c in df.columns else None
    meta["site"] = _one_hot_names(df, SITE_COLUMNS).to_numpy()
    meta["view"] = _one_hot_names(df, VIEW_COLUMNS).to_numpy()
    return meta


def _locate(arg: str) -> tuple[Path, Path]:
    p = Path(arg).expanduser()
    xlsx = p if p.is_file() else p / "dataset.xlsx"
    if not xlsx.is_file():
        raise DataError(f"btxrd source: {xlsx} not found (expected the BTXRD folder holding dataset.xlsx and images/)")
    images = xlsx.parent / "images"
    if not images.is_dir():
        raise DataError(f"btxrd source: image folder {images} not found (expected BTXRD/images/IMG000001.jpeg ...)")
    return xlsx.absolute(), images.absolute()


@SOURCES.register("btxrd")
def btxrd_source(arg: str, *, split: str = "random", test_centers: list[int] | None = None, sheet: str | int = 0,
                 verify: bool | str = "header", strict: bool = False) -> SourceData:
    """BTXRD bone tumours: BTXRD/dataset.xlsx + images/ -> normal/benign/malignant, metadata, split by centre.

    ``split``: ``random`` (held-out splits drawn from all images; BTXRD has no patient ids) or
    ``center`` (test = ``test_centers``, default [2, 3]; train and val from the other centres).
    """
    if split not in ("random", "center"):
        raise ConfigError(f"btxrd option split must be 'random' or 'center', got {split!r}")
    if test_centers is not None and split != "center":
        raise ConfigError("btxrd option test_centers needs split: center")
    xlsx, images = _locate(arg)
    df = manifest.read_manifest(xlsx, sheet)
    _check_labels(df, xlsx)
    if split == "center":
        manifest.require_columns(df, {"split=center": "center"}, xlsx)
    try:
        src = manifest.csv_source(str(xlsx), path_col="image_id", label_cols=["benign", "malignant"],
                                  none_label="normal", classes=list(CLASSES), image_root=str(images), sheet=sheet,
                                  verify=verify, strict=strict, table=df)
    except DataError as e:
        msg = str(e)
        raise DataError(msg if xlsx.name in msg else f"{xlsx}: {msg}") from None
    meta = metadata(df)
    train = src.splits["train"]
    table = MetaFileTable(train.paths, train.labels, train.ids, None,
                          meta=meta.loc[[str(i).strip() for i in train.ids]])
    log.warning(NO_PATIENT_IDS)
    notes = [n for n in src.notes or [] if "no group_col" not in n] + [NO_PATIENT_IDS]
    splits: dict[str, FileTable | None] = {"train": table, "val": None, "test": None}
    extra = {"source": "btxrd", "manifest": str(xlsx), "image_root": str(images), "metadata": list(META_COLUMNS),
             "split": split}
    if split == "center":
        wanted = [2, 3] if test_centers is None else list(test_centers)
        centers = np.array([normalise_center(c) for c in table.meta["center"]], dtype=object)
        wanted_s = {normalise_center(c) for c in wanted}
        found = sorted(set(centers), key=lambda v: (len(v), v))
        if not wanted_s <= set(found) or wanted_s >= set(found):
            raise ConfigError(f"btxrd test_centers {wanted} must be some, not all, of the centres in {xlsx.name} "
                              f"({', '.join(found)})")
        is_test = np.isin(centers, list(wanted_s))
        splits = {"train": table.subset(np.flatnonzero(~is_test)), "val": None,
                  "test": table.subset(np.flatnonzero(is_test))}
        train_c = sorted(set(centers[~is_test]), key=lambda v: (len(v), v))
        notes.append(f"external validation: train/val from centre(s) {', '.join(train_c)} "
                     f"({int((~is_test).sum())} images), test = centre(s) {', '.join(sorted(wanted_s))} "
                     f"({int(is_test.sum())} images)")
        extra["test_centers"] = sorted(wanted_s)
    spec = DatasetSpec(name="btxrd", task="multiclass", class_names=CLASSES, channels=src.spec.channels, extra=extra)
    return SourceData(spec, splits, notes)

