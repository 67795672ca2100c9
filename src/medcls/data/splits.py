"""Stratified (and group-aware) train/val/test splitting, and split files.

:func:`split_indices` holds out one fraction; :func:`assign_splits` makes a
three-way train/val/test assignment (patient-grouped when group ids are given);
:func:`center_splits` keeps whole centres for test (external validation).
A split file (``id,split,label,group``, written by ``medcls data split``) is
applied by :func:`apply_splits_file` so that training uses exactly those splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import numpy as np

from ..choices import Split
from ..errors import DataError
from .table import ImageTable

SPLIT_FILE_COLUMNS = ("id", "split", "label", "group")
SPLITS = get_args(Split)


def strata(labels: np.ndarray) -> np.ndarray:
    """The class used to stratify: the label, or the first positive of a multilabel row."""
    labels = np.asarray(labels)
    return labels.argmax(1) if labels.ndim == 2 else labels


def split_indices(labels: np.ndarray, fraction: float, *, seed: int = 0, groups: np.ndarray | None = None,
                  stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into (keep, held_out) with ~``fraction`` held out.

    Stratified by class (unless ``stratify=False``). With ``groups`` (patient ids),
    no group is on both sides; classes are balanced as well as the groups allow
    (StratifiedGroupKFold).
    """
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

    n = len(labels)
    if not 0 < fraction < 1:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise DataError(f"cannot split {n} sample(s)")
    y = strata(labels)
    idx = np.arange(n)
    try:
        if groups is not None:
            groups = np.asarray(groups).astype(str)
            n_groups = len(np.unique(groups))
            if n_groups < 2:
                raise DataError(f"cannot split by group: only {n_groups} distinct group id(s)")
            n_splits = max(2, min(round(1 / fraction), n_groups))
            counts = np.bincount(y)
            keep = held = np.array([], dtype=np.int64)
            if stratify and counts[counts > 0].min() >= n_splits:
                cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
                keep, held = next(cv.split(idx, y, groups))
            if len(keep) == 0 or len(held) == 0:  # too few samples of a class to stratify (or not asked to)
                test_size = min(fraction, (n_groups - 1) / n_groups)
                gss = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
                keep, held = next(gss.split(idx, y, groups))
            return np.sort(keep), np.sort(held)
        counts = np.bincount(y)
        n_cls = len(counts[counts > 0])
        ok = stratify and counts[counts > 0].min() >= 2 and n_cls <= round(n * fraction) <= n - n_cls
        strat = y if ok else None
        keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=strat)
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot hold out {fraction:.0%} of {n} samples"
                        f"{'' if groups is None else f' in {len(np.unique(groups))} groups'}: {e}") from None
    return np.sort(keep), np.sort(held)


def _check_fractions(val: float, test: float) -> None:
    for name, f in (("val", val), ("test", test)):
        if not 0 <= f < 1:
            raise DataError(f"the {name} fraction must be in [0, 1), got {f}")
    if val + test >= 1:
        raise DataError(f"val + test fractions must leave some training data, got {val} + {test} = {val + test:g}")


def assign_splits(labels: np.ndarray, *, val: float, test: float, groups: np.ndarray | None = None,
                  stratify: bool = True, seed: int = 0) -> np.ndarray:
    """A split name (train/val/test) per sample; ``val`` and ``test`` are fractions of all samples.

    Test is held out first, then val from the rest (``val / (1 - test)`` of it). With ``groups`` every
    group lands in exactly one split.
    """
    _check_fractions(val, test)
    labels = np.asarray(labels)
    out = np.full(len(labels), "train", dtype=object)
    rest = np.arange(len(labels))
    g = None if groups is None else np.asarray(groups).astype(str)
    need = 1 + (val > 0) + (test > 0)
    if (len(labels) if g is None else len(np.unique(g))) < need:
        what = "samples" if g is None else "groups (patients)"
        raise DataError(f"need at least {need} {what} for train/val/test splits, got "
                        f"{len(labels) if g is None else len(np.unique(g))}")
    if test > 0:
        keep, held = split_indices(labels, test, seed=seed, groups=g, stratify=stratify)
        out[held] = "test"
        rest = keep
    if val > 0:
        _, held = split_indices(labels[rest], val / (1 - test), seed=seed + 1, groups=None if g is None else g[rest],
                                stratify=stratify)
        out[rest[held]] = "val"
    return out


def normalise_center(value: object) -> str:
    """``1``, ``1.0`` and ``'1'`` name the same centre."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value).strip()
    return str(int(f)) if np.isfinite(f) and f == int(f) else str(value).strip()


def center_splits(labels: np.ndarray, centers: Sequence[object], *, test_centers: Sequence[object], val: float,
                  groups: np.ndarray | None = None, stratify: bool = True, seed: int = 0) -> np.ndarray:
    """External validation: every sample of ``test_centers`` is test; val is carved from the other centres."""
    _check_fractions(val, 0)
    c = np.array([normalise_center(v) for v in centers], dtype=object)
    wanted = {normalise_center(v) for v in test_centers}
    found = sorted(set(c), key=lambda v: (len(v), v))
    if not wanted or not wanted <= set(found):
        raise DataError(f"test centres {sorted(wanted)} are not all among the centres of the data ({', '.join(found)})")
    is_test = np.isin(c, list(wanted))
    if is_test.all():
        raise DataError(f"test centres {sorted(wanted)} hold every sample; leave at least one centre for training "
                        f"(centres: {', '.join(found)})")
    out = np.where(is_test, "test", "train").astype(object)
    rest = np.flatnonzero(~is_test)
    if val > 0:
        _, held = split_indices(np.asarray(labels)[rest], val, seed=seed + 1, stratify=stratify,
                                groups=None if groups is None else np.asarray(groups)[rest])
        out[rest[held]] = "val"
    return out


class ConcatTable(ImageTable):
    """Rows of several tables seen as one (official splits pooled before re-splitting)."""

    def __init__(self, parts: Sequence[ImageTable], part_of: np.ndarray | None = None,
                 row_of: np.ndarray | None = None) -> None:
        self.parts = list(parts)
        if part_of is None or row_of is None:
            part_of = np.concatenate([np.full(len(t), k, dtype=np.int64) for k, t in enumerate(self.parts)])
            row_of = np.concatenate([np.arange(len(t), dtype=np.int64) for t in self.parts])
        self.part_of, self.row_of = np.asarray(part_of, dtype=np.int64), np.asarray(row_of, dtype=np.int64)
        offsets = np.cumsum([0] + [len(t) for t in self.parts])[:-1]
        flat = offsets[self.part_of] + self.row_of  # row in the concatenation of all parts
        self.labels = np.concatenate([t.labels for t in self.parts])[flat]
        all_ids = [i for t in self.parts for i in t.ids]
        self.ids = [all_ids[j] for j in flat]
        self.groups = (None if any(t.groups is None for t in self.parts)
                       else np.concatenate([np.asarray(t.groups, dtype=object) for t in self.parts])[flat])
        metas = [getattr(t, "meta", None) for t in self.parts]
        if all(m is not None for m in metas):
            import pandas as pd

            self.meta = pd.concat(metas, ignore_index=True).iloc[flat].reset_index(drop=True)

    def load(self, i: int, *, draft: int | None = None) -> np.ndarray:
        return self.parts[self.part_of[i]].load(int(self.row_of[i]), draft=draft)

    def describe(self, i: int) -> str:
        return self.parts[self.part_of[i]].describe(int(self.row_of[i]))

    def _take(self, idx: np.ndarray) -> ImageTable:
        return ConcatTable(self.parts, self.part_of[idx], self.row_of[idx])


def pool_tables(tables: dict[str, ImageTable | None]) -> ImageTable:
    """All samples of a source's official splits as one table (the table itself when there is only one)."""
    present = [t for s in SPLITS if (t := tables.get(s)) is not None and len(t)]
    if not present:
        raise DataError("the source has no samples")
    if len(present) == 1:
        return present[0]
    pooled = ConcatTable(present)
    dup = _duplicates(pooled.ids)
    if dup:
        raise DataError(f"sample ids repeat across the source's splits ({', '.join(map(repr, dup[:3]))}); "
                        "cannot pool them for a split file")
    return pooled


def _duplicates(ids: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    return [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]


def splits_frame(table: ImageTable, split_of: np.ndarray, class_names: Sequence[str], groups: np.ndarray | None):
    """The ``id,split,label,group`` DataFrame of a split assignment."""
    import pandas as pd

    y = strata(table.labels)
    return pd.DataFrame({"id": table.ids, "split": np.asarray(split_of, dtype=str),
                         "label": [class_names[int(k)] for k in y],
                         "group": [""] * len(y) if groups is None else np.asarray(groups).astype(str)})


def read_splits_file(path: str | Path):
    """Read and check a split file: columns id and split (label, group optional); split in train/val/test."""
    import pandas as pd

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.splits_file {p} does not exist (write one with `medcls data split`)")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"data.splits_file {p}: cannot parse it as CSV ({type(e).__name__}: {e})") from None
    missing = [c for c in ("id", "split") if c not in df.columns]
    if missing:
        raise DataError(f"data.splits_file {p}: missing column(s) {', '.join(missing)}; expected "
                        f"{','.join(SPLIT_FILE_COLUMNS)}, got {','.join(map(str, df.columns))}")
    df["split"] = df["split"].str.strip().str.lower()
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        rows = (np.flatnonzero(bad.to_numpy()) + 2)[:5].tolist()
        raise DataError(f"data.splits_file {p}: split must be train, val or test; got "
                        f"{sorted(set(df['split'][bad]))[:5]} in row(s) {rows}")
    dup = _duplicates(df["id"].tolist())
    if dup:
        raise DataError(f"data.splits_file {p}: id(s) listed more than once: {', '.join(map(repr, dup[:3]))}")
    return df


def apply_splits_file(tables: dict[str, ImageTable | None], path: str | Path,
                      class_names: Sequence[str]) -> dict[str, ImageTable]:
    """Re-split a source's samples as a split file says; every id must match, both ways."""
    p = Path(path).expanduser()
    df = read_splits_file(p)
    table = pool_tables(tables)
    pos = {sid: i for i, sid in enumerate(table.ids)}
    unknown = [sid for sid in df["id"] if sid not in pos]
    if unknown:
        raise DataError(f"data.splits_file {p}: {len(unknown)} id(s) are not samples of the source "
                        f"(e.g. {', '.join(map(repr, unknown[:3]))}; first source ids: "
                        f"{', '.join(map(repr, table.ids[:3]))}). Was it written for another source, or are those "
                        "images now unreadable/missing?")
    listed = set(df["id"])
    absent = [sid for sid in table.ids if sid not in listed]
    if absent:
        raise DataError(f"data.splits_file {p}: {len(absent)} sample(s) of the source are not in the file "
                        f"(e.g. {', '.join(map(repr, absent[:3]))}); rewrite it with `medcls data split`")
    rows = np.array([pos[sid] for sid in df["id"]], dtype=np.int64)
    if "label" in df.columns and (df["label"] != "").any():
        y = strata(table.labels)[rows]
        names = np.array([class_names[int(k)] for k in y], dtype=object)
        differ = (df["label"].to_numpy() != names) & (df["label"].to_numpy() != "")
        if differ.any():
            i = int(np.flatnonzero(differ)[0])
            raise DataError(f"data.splits_file {p}: {int(differ.sum())} label(s) differ from the source, e.g. "
                            f"{df['id'].iloc[i]!r} is {names[i]!r} in the source but {df['label'].iloc[i]!r} "
                            "in the file")
    out: dict[str, ImageTable] = {}
    split = df["split"].to_numpy()
    for s in SPLITS:
        sel = np.sort(rows[split == s])
        if len(sel) == 0:
            raise DataError(f"data.splits_file {p}: no {s!r} rows; a split file needs train, val and test samples")
        out[s] = table.subset(sel)
    return out
