"""Re-split a whole source into train/val/test (``medcls data split`` -> ``splits.csv``).

Above both :mod:`.sources` (it reads a source) and :mod:`.splits` (the pure assignment
functions), so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError
from .groups import describe_groups, source_groups
from .sources import call_source, parse_source
from .splits import ConcatTable, assign_splits, center_splits, normalise_center, pool_tables, splits_frame


def _source_options(kind: str, options: dict | None, by: str, patient_col: str | None) -> dict:
    options = dict(options or {})
    if patient_col is not None and by == "patient":
        if kind == "csv" or (kind == "dicom" and "labels" in options):
            options.setdefault("group_col", patient_col)
        elif kind == "dicom" and patient_col.replace("_", "").lower() != "patientid":
            raise DataError(f"--patient-col {patient_col!r}: a dicom source without options.labels has only "
                            "PatientID (used as a keyed hash)")
    return options


def _pooled(src, source: str, keep_test: bool):
    """All samples in one table, and which of them are the source's own test split when it is kept."""
    official_test = src.splits.get("test")
    if not keep_test:
        table = pool_tables(src.splits)
        return table, np.zeros(len(table), dtype=bool)
    if official_test is None or len(official_test) == 0:
        raise DataError(f"--keep-test: {source} has no test split of its own")
    rest = pool_tables({"train": src.splits.get("train"), "val": src.splits.get("val")})
    table = ConcatTable([rest, official_test])
    return table, np.arange(len(table)) >= len(rest)


def _by_center(table, free: np.ndarray, g_free, kind: str, center_col: str, test_centers, val: float,
               stratify: bool, seed: int) -> tuple[np.ndarray, str]:
    meta = getattr(table, "meta", None)
    if meta is None or center_col not in meta.columns:
        cols = [] if meta is None else [str(c) for c in meta.columns]
        raise DataError(f"--by center needs a {center_col!r} column in the source's metadata (the btxrd source "
                        f"has one); {kind} source has " + (f"columns {', '.join(cols)}" if cols else "no metadata"))
    centers = [normalise_center(c) for c in meta[center_col].to_numpy()[free]]
    if test_centers is None:
        test_centers = sorted(set(centers), key=lambda v: (len(v), v))[1:]
    part = center_splits(table.labels[free], centers, test_centers=test_centers, val=val, groups=g_free,
                         stratify=stratify, seed=seed)
    return part, f"test = centre(s) {', '.join(map(str, test_centers))}"


def _shared_groups(groups, split_of: np.ndarray, keep_test: bool) -> list[str]:
    if groups is None:
        return []
    g, notes = np.asarray(groups).astype(str), []
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = set(g[split_of == a]) & set(g[split_of == b])
        if shared:  # the official test split of a source may share patients with its train split
            notes.append(f"warning: {len(shared)} group(s) are in both {a} and {b}"
                         + (" (the source's own test split shares them)" if keep_test else ""))
    return notes


def split_source(source: str, *, options: dict | None = None, by: str = "patient", val: float = 0.1,
                 test: float = 0.2, stratify: bool = True, seed: int = 0, patient_col: str | None = None,
                 patient_regex: str | None = None, center_col: str = "center",
                 test_centers: Sequence[object] | None = None, keep_test: bool = False,
                 data_dir: str | None = None):
    """Assign every sample of a source to train/val/test. Returns (``id,split,label,group`` frame, notes).

    ``by``: ``patient`` (groups from :func:`~medcls.data.groups.source_groups`), ``none`` (by image) or
    ``center`` (whole centres to test; needs a ``center_col`` metadata column, as BTXRD has).
    ``keep_test`` keeps the source's own test split and re-splits the rest into train/val.
    """
    if by not in ("patient", "none", "center"):
        raise DataError(f"--by must be patient, none or center, got {by!r}")
    kind, arg = parse_source(source)
    src = call_source(kind, arg, data_dir, _source_options(kind, options, by, patient_col))
    notes = list(src.notes or [])
    table, fixed_test = _pooled(src, source, keep_test)
    groups, how = source_groups(table, kind=kind, by=by, patient_col=patient_col, patient_regex=patient_regex)
    notes.append(f"groups: {how}; {describe_groups(groups, len(table))}")
    free = np.flatnonzero(~fixed_test)
    g_free = None if groups is None else np.asarray(groups)[free]
    if by == "center":
        part, note = _by_center(table, free, g_free, kind, center_col, test_centers, val, stratify, seed)
        notes.append(note)
    else:
        part = assign_splits(table.labels[free], val=val, test=0.0 if keep_test else test, groups=g_free,
                             stratify=stratify, seed=seed)
    split_of = np.full(len(table), "test", dtype=object)
    split_of[free] = part
    notes += _shared_groups(groups, split_of, keep_test)
    return splits_frame(table, split_of, src.spec.class_names, groups), notes
