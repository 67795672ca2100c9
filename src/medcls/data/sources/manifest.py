"""Label tables (CSV, TSV, Excel) as a data source: ``csv:/path/to/labels.csv``.

One row per image. ``path_col`` holds the image path (relative to
``image_root``, default the manifest's folder; a relative ``image_root`` is
itself relative to the manifest's folder) or an id without extension
(BTXRD ``image_id`` = ``IMG000001`` -> ``IMG000001.jpeg``). Labels come from one
column of class names/ints (``label_col``) or from one-hot columns
(``label_cols``, e.g. BTXRD ``[benign, malignant]`` with rows that set neither
labelled ``none_label``). ``group_col`` (patient id) makes held-out splits
patient-disjoint; ``split_col`` (train/val/test) gives official splits.
Every column of the manifest is kept per image in ``table.meta`` (for
multimodal models: ``inputs.numeric``/``categorical``/``text``).

Row numbers in messages are as a spreadsheet shows them (header = row 1).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ...choices import Task
from ...errors import ConfigError, DataError, did_you_mean
from ..images import IMAGE_SUFFIXES
from ..spec import DatasetSpec
from ..table import FileTable
from . import folder
from .registry import SOURCES, SourceData

ID_EXTENSIONS = (".jpeg", ".jpg", ".png", ".JPEG", ".JPG", ".PNG")
_TRUE = {"1", "1.0", "true", "yes", "y", "x"}
_FALSE = {"0", "0.0", "false", "no", "n", "", "nan"}


def row_numbers(mask: np.ndarray) -> str:
    """Spreadsheet row numbers (header = row 1) of the True entries of ``mask``."""
    return folder.short_list([str(i + 2) for i in np.flatnonzero(mask)])


def _read_excel(path: Path, sheet: str | int) -> pd.DataFrame:
    import zipfile

    try:
        with pd.ExcelFile(path) as xl:
            names = [str(n) for n in xl.sheet_names]
            if (sheet not in names) if isinstance(sheet, str) else not 0 <= sheet < len(names):
                raise DataError(f"{path.name}: no sheet {sheet!r}.{did_you_mean(str(sheet), names)} "
                                f"Sheets: {', '.join(names)} (option sheet takes a name or a 0-based index)")
            return pd.read_excel(xl, sheet_name=sheet)
    except ImportError as e:
        raise DataError(f"reading {path.name} needs an Excel reader (pip install openpyxl): {e}") from None
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"csv source: cannot read Excel file {path}: {e}") from None


def read_manifest(path: Path, sheet: str | int = 0) -> pd.DataFrame:
    """Read a .csv/.tsv/.xlsx file into a DataFrame with stripped column names."""
    if not path.is_file():
        raise DataError(f"csv source: manifest {path} does not exist" if not path.exists()
                        else f"csv source: {path} is a folder, expected a .csv, .tsv or .xlsx file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path)
        elif suffix in (".tsv", ".tab"):
            df = pd.read_csv(path, sep="\t")
        elif suffix in (".xlsx", ".xlsm", ".xls"):
            df = _read_excel(path, sheet)
        else:
            raise DataError(f"csv source: {path.name} must be a .csv, .tsv or .xlsx file, got {suffix or 'no suffix'!r}")
    except pd.errors.EmptyDataError:
        raise DataError(f"csv source: manifest {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"csv source: cannot parse {path}: {e}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise DataError(f"csv source: manifest {path} has a header ({folder.short_list(list(df.columns))}) but no rows")
    return df


def require_columns(df: pd.DataFrame, wanted: dict[str, str], path: Path) -> None:
    missing = [(opt, col) for opt, col in wanted.items() if col not in df.columns]
    if missing:
        parts = [f"{col!r} (option {opt}){did_you_mean(col, df.columns)}" for opt, col in missing]
        end = "" if parts[-1].endswith("?") else "."
        raise DataError(f"{path.name}: missing column(s) {'; '.join(parts)}{end} Columns: {', '.join(map(str, df.columns))}")


def _is_integral(values: pd.Series) -> bool:
    num = pd.to_numeric(values, errors="coerce")
    return bool(num.notna().all() and (num == num.round()).all())


def _single_labels(col: pd.Series, classes: list[str] | None, name: str) -> tuple[np.ndarray, list[str]]:
    """Class indices from one column of names or ints."""
    empty = col.isna().to_numpy()
    if empty.any():
        raise DataError(f"column {name!r} is empty in row(s) {row_numbers(empty)}")
    integral = _is_integral(col)
    as_str = (pd.to_numeric(col).astype(np.int64).astype(str) if integral else col.astype(str).str.strip()).to_numpy()
    if classes is None:
        uniq = sorted(set(as_str), key=(lambda v: int(v)) if integral else None)
        names = list(uniq)
    else:
        names = [str(c) for c in classes]
        if not set(as_str) <= set(names) and integral:
            ints = pd.to_numeric(col).astype(np.int64).to_numpy()
            if ints.min() >= 0 and ints.max() < len(names):  # ints index the given classes
                return ints, names
        unknown = ~np.isin(as_str, names)
        if unknown.any():
            bad = sorted(set(as_str[unknown]))
            hints = "".join(f" {b!r}:{did_you_mean(b, names)}" for b in bad[:10] if did_you_mean(b, names))
            raise DataError(
                f"unknown label(s) {', '.join(repr(b) for b in bad[:10])} in column {name!r} (row(s) {row_numbers(unknown)})."
                f"{hints} Expected one of the classes: {', '.join(names)}"
            )
    index = {c: i for i, c in enumerate(names)}
    return np.array([index[v] for v in as_str], dtype=np.int64), names


def binary_flags(col: pd.Series, name: str) -> np.ndarray:
    """0/1 (also true/false, yes/no, blank) -> bool."""
    num = pd.to_numeric(col, errors="coerce")
    text = col.astype(str).str.strip().str.lower()
    true = (num.fillna(0) != 0).to_numpy() | text.isin(_TRUE).to_numpy()
    bad = ~(num.notna().to_numpy() | text.isin(_TRUE | _FALSE).to_numpy())
    if bad.any():
        raise DataError(f"one-hot column {name!r} holds non 0/1 values {sorted(set(text[bad]))[:5]} "
                        f"in row(s) {row_numbers(bad)}")
    return true


def _onehot_labels(df: pd.DataFrame, label_cols: list[str], *, multilabel: bool, none_label: str | None,
                   classes: list[str] | None) -> tuple[np.ndarray, list[str], Task]:
    hot = np.stack([binary_flags(df[c], c) for c in label_cols], axis=1)
    if multilabel:
        names = list(label_cols)
        if classes is not None:
            if sorted(map(str, classes)) != sorted(names):
                raise DataError(f"classes {list(classes)} must list the label_cols {names} (in any order)")
            hot = hot[:, [names.index(str(c)) for c in classes]]
            names = [str(c) for c in classes]
        return hot.astype(np.float32), names, "multilabel"
    n_set = hot.sum(1)
    if (n_set > 1).any():
        raise DataError(f"row(s) {row_numbers(n_set > 1)} set more than one of the label columns {label_cols}; "
                        "a single-label task needs at most one (use options.multilabel=true for multi-label data)")
    if none_label is not None and none_label in label_cols:
        raise ConfigError(f"none_label {none_label!r} is also one of label_cols {label_cols}")
    has_none = bool((n_set == 0).any())
    if has_none and none_label is None:
        raise DataError(f"row(s) {row_numbers(n_set == 0)} set none of the label columns {label_cols} "
                        "and options.none_label is null")
    names = ([str(none_label)] if has_none else []) + list(label_cols)
    labels = np.where(n_set == 0, 0, hot.argmax(1) + (1 if has_none else 0))
    if classes is not None:
        order = [str(c) for c in classes]
        allowed = list(label_cols) + ([str(none_label)] if none_label is not None else [])
        unknown = [c for c in order if c not in allowed]
        missing = [n for n in names if n not in order]
        if unknown or missing or len(set(order)) != len(order):
            raise DataError(
                f"options.classes {order} does not match the labels of label_cols {label_cols} "
                f"(none_label {none_label!r})"
                + (f"; unknown: {unknown}.{did_you_mean(unknown[0], allowed)}" if unknown else "")
                + (f"; missing: {missing}" if missing else "")
                + ("; duplicated names" if len(set(order)) != len(order) else "")
            )
        remap = np.array([order.index(n) for n in names])
        labels, names = remap[labels], order
    return labels.astype(np.int64), names, "binary" if len(names) == 2 else "multiclass"


def _resolve_paths(raw: pd.Series, root: Path, image_ext: str | None) -> list[Path | None]:
    """Image path per row (``None`` where no file exists)."""
    out: list[Path | None] = []
    ext = None if image_ext is None else (image_ext if image_ext.startswith(".") else "." + image_ext)
    for value in raw.astype(str).str.strip():
        p = Path(value).expanduser()
        p = p if p.is_absolute() else root / p
        has_ext = p.suffix.lower() in IMAGE_SUFFIXES
        if ext is not None:
            cands = [p if p.suffix.lower() == ext.lower() else p.with_name(p.name + ext)]
        elif has_ext:
            cands = [p]
        else:
            cands = [p.with_name(p.name + e) for e in ID_EXTENSIONS] + [p]
        out.append(next((c for c in cands if c.is_file()), None))
    return out


def _check_options(label_col, label_cols, multilabel: bool, table) -> None:
    if label_cols is not None and (isinstance(label_cols, str) or len(label_cols) == 0):
        raise ConfigError(f"option label_cols must be a non-empty list of column names, got {label_cols!r}")
    if label_cols is None and label_col is None:
        raise ConfigError("csv source: set options.label_col (one column of class names) or options.label_cols "
                          "(one-hot columns)")
    if multilabel and label_cols is None:
        raise ConfigError("csv source: options.multilabel=true needs options.label_cols (one 0/1 column per label)")
    if table is not None and not isinstance(table, pd.DataFrame):
        raise ConfigError(f"csv source: table must be a pandas DataFrame read by read_manifest, got {type(table).__name__}")


def _labels(df: pd.DataFrame, path: Path, label_col, label_cols, multilabel: bool, none_label, classes):
    """(labels, class names, task) from one label column or one-hot columns."""
    if label_cols is not None:
        labels, names, task = _onehot_labels(df, [str(c) for c in label_cols], multilabel=multilabel,
                                             none_label=none_label, classes=classes)
    else:
        labels, names = _single_labels(df[str(label_col)], classes, str(label_col))
        task = "binary" if len(names) == 2 else "multiclass"
    if task != "multilabel" and len(names) < 2:
        raise DataError(f"{path.name}: all rows have the label {names[0]!r}; need at least 2 classes")
    return labels, names, task


def _image_paths(df: pd.DataFrame, path: Path, path_col: str, image_root, image_ext, strict: bool, notes: list[str]):
    """(resolved path or None per row, the raw column, which rows are missing, the image root)."""
    empty_path = df[path_col].isna().to_numpy() | (df[path_col].astype(str).str.strip() == "").to_numpy()
    if empty_path.any():
        raise DataError(f"{path.name}: column {path_col!r} is empty in row(s) {row_numbers(empty_path)}")
    root = path.parent if image_root is None else Path(image_root).expanduser()
    if image_root is not None and not root.is_absolute():
        root = path.parent / root
    root = root.absolute()  # tables must not depend on the working directory
    if not root.is_dir():
        raise DataError(f"csv source: image_root {root} is not a folder")
    found = _resolve_paths(df[path_col], root, image_ext)
    missing = np.array([p is None for p in found])
    raw = df[path_col].astype(str).str.strip().to_numpy()
    if missing.all():
        raise DataError(f"{path.name}: none of the {len(raw)} image paths exist under {root} (first: {raw[0]!r}"
                        f"{'' if image_ext else ', also tried .jpeg/.jpg/.png'}). Check options.image_root.")
    if missing.any():
        msg = (f"{path.name}: {int(missing.sum())} of {len(raw)} image(s) not found under {root}: "
               f"{folder.short_list(list(raw[missing]))} (row(s) {row_numbers(missing)})")
        if strict:
            raise DataError(msg)
        warnings.warn(msg + ". Skipping them (options.strict=true makes this an error).", stacklevel=3)
        notes.append(f"skipped {int(missing.sum())} missing image(s)")
    return found, raw, missing, root


def _split_column(df: pd.DataFrame, split_col: str | None) -> np.ndarray:
    if split_col is None:
        return np.full(len(df), "train")
    split_raw = df[split_col].astype(str).str.strip().str.lower().to_numpy()
    bad = ~np.isin(split_raw, list(folder.SPLIT_NAMES))
    if bad.any():
        raise DataError(f"column {split_col!r} holds {sorted(set(split_raw[bad]))[:10]} in row(s) {row_numbers(bad)}; "
                        f"expected train, val (or valid/validation) or test")
    split_of = np.array([folder.SPLIT_NAMES[v] for v in split_raw])
    if not (split_of == "train").any():
        raise DataError(f"column {split_col!r} has no 'train' rows")
    return split_of


def _group_column(df: pd.DataFrame, path: Path, group_col: str | None, split_col: str | None,
                  notes: list[str]) -> np.ndarray | None:
    if group_col is None:
        if split_col is None:
            notes.append(f"{path.name}: no group_col (patient id): views of one patient may land in both train and "
                         "held-out splits")
        return None
    g = df[group_col]
    if g.isna().any():
        notes.append(f"{int(g.isna().sum())} row(s) without {group_col}: each is its own group")
    return np.array([f"row:{i + 2}" if pd.isna(v) else str(v).strip() for i, v in enumerate(g)], dtype=object)


@SOURCES.register("csv")
def csv_source(arg: str, *, path_col: str = "path", label_col: str | None = "label",
               label_cols: list[str] | None = None, group_col: str | None = None, split_col: str | None = None,
               image_root: str | None = None, sheet: str | int = 0, classes: list[str] | None = None,
               multilabel: bool = False, none_label: str | None = "normal", image_ext: str | None = None,
               verify: bool | str = "header", strict: bool = False, channels: int | None = None,
               table: pd.DataFrame | None = None) -> SourceData:
    """Images listed in a CSV/TSV/Excel table with a label column or one-hot label columns.

    ``classes`` fixes the class order (other labels are errors); ``image_ext`` is
    appended to ids without an extension (default: try .jpeg, .jpg, .png). ``table``
    (Python callers only) is the manifest already read with :func:`read_manifest`. ``verify``: as the
    ``folder`` source (``header``, ``decode`` or ``off``).
    """
    folder.check_channels(channels)
    folder.verify_mode(verify)
    path = Path(arg).expanduser()
    _check_options(label_col, label_cols, multilabel, table)
    df = read_manifest(path, sheet) if table is None else table
    wanted = {"path_col": path_col, **({f"label_cols[{i}]": c for i, c in enumerate(label_cols)}
                                       if label_cols is not None else {"label_col": str(label_col)})}
    wanted.update({k: v for k, v in (("group_col", group_col), ("split_col", split_col)) if v is not None})
    require_columns(df, wanted, path)
    labels, names, task = _labels(df, path, label_col, label_cols, multilabel, none_label, classes)
    notes: list[str] = []
    found, raw, missing, root = _image_paths(df, path, path_col, image_root, image_ext, strict, notes)
    split_of = _split_column(df, split_col)
    groups = _group_column(df, path, group_col, split_col, notes)
    guess: int | None = None
    splits: dict[str, FileTable | None] = {"train": None, "val": None, "test": None}
    for s in ("train", "val", "test"):
        rows = np.flatnonzero((split_of == s) & ~missing)
        if len(rows) == 0:
            continue
        ok, g_ch = folder.check_images([found[i] for i in rows], verify=verify, strict=strict,
                                       where=f"{path.name} ({s})")
        guess = guess if guess is not None else g_ch
        rows = rows[folder.readable_rows(ok, notes, s, path.name, skipped="unreadable image(s)",
                                         none_read="listed images")]
        splits[s] = FileTable([found[i] for i in rows], labels[rows], [str(raw[i]) for i in rows],
                              None if groups is None else groups[rows], meta=df.iloc[rows])
    spec = DatasetSpec(name=path.stem, task=task, class_names=tuple(names),
                       channels=channels if channels is not None else (guess or 1),
                       extra={"source": "csv", "manifest": str(path), "image_root": str(root)})
    return SourceData(spec, splits, notes)
