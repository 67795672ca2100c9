"""Patient (group) ids: from file names, table columns or DICOM pseudonyms.

Group ids keep every image of one patient in one split. Kaggle chest_xray file
names carry one (``person12_bacteria_3.jpeg`` -> ``person12``,
``NORMAL2-IM-0001-0001.jpeg`` -> ``IM-0001``); tables may have a patient column;
DICOM files have ``PatientID``, replaced by a keyed hash (:mod:`medcls.data.dicom`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, did_you_mean

# Kaggle chest_xray file names: person1_bacteria_1.jpeg, IM-0001-0001.jpeg, NORMAL2-IM-0001-0001.jpeg
KAGGLE_PATIENT_PATTERNS = ((re.compile(r"person(\d+)_"), "person{}"), (re.compile(r"IM-(\d+)-"), "IM-{}"))
DEFAULT_PATIENT_REGEX = r"person(\d+)_"


def compile_regex(patient_regex: str, where: str = "option patient_regex") -> re.Pattern[str]:
    try:
        return re.compile(patient_regex)
    except re.error as e:
        raise ConfigError(f"{where} {patient_regex!r} is not a valid regular expression: {e}") from None


def patient_groups(names: Sequence[str], patient_regex: str | None = None) -> tuple[np.ndarray, int]:
    """Patient id per file name and how many names matched.

    With ``patient_regex`` the id is its first capture group (or the whole
    match); by default the Kaggle chest_xray patterns ``person(\\d+)_`` and
    ``IM-(\\d+)-`` are tried. A name that matches nothing is its own group.
    """
    if patient_regex is not None:
        patterns: tuple[tuple[re.Pattern[str], str], ...] = ((compile_regex(patient_regex), "{}"),)
    else:
        patterns = KAGGLE_PATIENT_PATTERNS
    groups: list[str] = []
    matched = 0
    for name in names:
        gid = None
        for rx, fmt in patterns:
            m = rx.search(Path(name).name)
            if m:
                gid = fmt.format(m.group(1) if m.groups() else m.group(0))
                break
        matched += gid is not None
        groups.append(gid if gid is not None else f"file:{name}")
    return np.array(groups, dtype=object), matched


def groups_from_regex(names: Sequence[str], patient_regex: str | None, *, where: str = "--patient-regex") -> np.ndarray:
    """Like :func:`patient_groups`, but a pattern that matches no file name is an error showing 3 names."""
    groups, matched = patient_groups(names, patient_regex)
    if matched == 0:
        shown = ", ".join(repr(Path(n).name) for n in list(names)[:3])
        pattern = patient_regex if patient_regex is not None else " or ".join(
            p.pattern for p, _ in KAGGLE_PATIENT_PATTERNS)
        raise DataError(f"{where} '{pattern}' matches none of the {len(names)} file names (e.g. {shown}); "
                        "write a pattern whose first (...) group captures the patient id")
    return groups


def groups_from_values(values: Sequence[object], *, what: str = "patient id") -> tuple[np.ndarray, int]:
    """Group ids from a column: blank values become their own group ``row:N``. Returns (groups, n_blank)."""
    out: list[str] = []
    blank = 0
    for i, v in enumerate(values):
        text = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()
        if text.lower() in ("", "nan", "none"):
            blank += 1
            out.append(f"row:{i}")
        else:
            out.append(text)
    if blank == len(out):
        raise DataError(f"every {what} is blank ({len(out)} rows)")
    return np.array(out, dtype=object), blank


def describe_groups(groups: np.ndarray | None, n: int) -> str:
    """``'412 groups for 1,020 images'`` (or that there are none)."""
    if groups is None:
        return f"no group ids ({n} images split individually)"
    return f"{len(np.unique(np.asarray(groups).astype(str)))} groups for {n} images"


def source_groups(table, *, kind: str, by: str, patient_col: str | None = None,
                  patient_regex: str | None = None) -> tuple[np.ndarray | None, str]:
    """Group ids of a source's pooled table for ``medcls data split`` and how they were found.

    ``by='patient'``: ``patient_col`` (a metadata column, or the group column a csv/dicom source was
    given), else ``patient_regex`` on the file names, else the source's own ids (folder file names,
    csv ``group_col``, DICOM PatientID pseudonyms), else the Kaggle pattern ``person(\\d+)_``, which
    must match at least one name. ``by='none'`` (or ``'center'`` without ids): the source's ids or none.
    """
    meta = getattr(table, "meta", None)
    names = [str(i) for i in table.ids]
    if by != "patient":
        return table.groups, "source group ids" if table.groups is not None else "none (split by image)"
    if patient_col is not None:
        if meta is not None and patient_col in meta.columns:
            groups, blank = groups_from_values(meta[patient_col].tolist(), what=f"{patient_col!r} value")
            return groups, f"column {patient_col!r}" + (f" ({blank} blank: own group)" if blank else "")
        if table.groups is not None and (kind in ("csv", "dicom")):
            return table.groups, f"column {patient_col!r}" if kind == "csv" else "DICOM PatientID (keyed hash)"
        cols = [] if meta is None else [str(c) for c in meta.columns]
        raise DataError(f"--patient-col {patient_col!r}: the {kind} source has no such column"
                        + (f".{did_you_mean(patient_col, cols)} Metadata columns: {', '.join(cols)}" if cols else
                           " (it applies to csv sources, BTXRD metadata and DICOM PatientID)"))
    if patient_regex is not None:
        return groups_from_regex(names, patient_regex), f"--patient-regex {patient_regex!r}"
    if table.groups is not None:
        return table.groups, "the source's patient ids"
    try:
        return groups_from_regex(names, DEFAULT_PATIENT_REGEX), f"file names ({DEFAULT_PATIENT_REGEX})"
    except DataError as e:
        raise DataError(f"{e}. No patient ids found: pass --patient-col COL or --patient-regex REGEX, or "
                        "--by none to split by image") from None
