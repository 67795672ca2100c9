"""DICOM files as a data source: ``dicom:/path/to/root``.

Layouts:

* ``ROOT/CLASS/*.dcm`` (or ``ROOT/{train,val,test}/CLASS/*.dcm``), like the ``folder`` source;
* ``ROOT`` + ``labels: labels.csv`` (a CSV/TSV/xlsx with a file column and a label column, or
  one-hot label columns), read by the ``csv`` source's reader with ``ROOT`` as the image root.

Files are ``.dcm``/``.dicom``/``.dic`` or extension-less files starting with the DICOM preamble.
Pixels are decoded by :mod:`medcls.data.dicom` (modality LUT, VOI LUT / window, MONOCHROME1
inverted, uint16 until the final normalisation). With ``group_by_patient`` (default) the
group id of a file is a keyed hash of its PatientID, so held-out splits are patient-disjoint
without the id being stored; no patient tag is ever logged.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError
from .. import dicom as dcm
from ..spec import DatasetSpec
from ..table import FileTable
from . import folder
from .registry import SOURCES, SourceData

log = logging.getLogger(__name__)


class DicomTable(FileTable):
    """DICOM files read on demand with a fixed windowing choice."""

    def __init__(self, paths, labels, ids=None, groups=None, *, window: dcm.Window = None) -> None:
        super().__init__(paths, labels, ids, groups)
        self.window = window

    def load(self, i: int, *, draft: int | None = None) -> np.ndarray:
        return dcm.read_dicom(self.paths[i], window=self.window)

    def _take(self, idx: np.ndarray) -> DicomTable:
        return DicomTable([self.paths[j] for j in idx], window=self.window, **self._sub(idx))


def _has_magic(p: Path) -> bool:
    try:
        with p.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == dcm.DICM_MAGIC


def dicom_files(where: Path) -> list[Path]:
    """DICOM files under ``where`` (recursively, sorted): known suffixes, or no suffix and the DICM magic."""
    out = []
    for p in sorted(where.rglob("*")):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix.lower() in dcm.DICOM_SUFFIXES or (p.suffix == "" and _has_magic(p)):
            out.append(p)
    return out


def _scan_classes(split_dir: Path, where: str) -> dict[str, list[Path]]:
    class_dirs = folder.visible_dirs(split_dir)
    if not class_dirs:
        raise DataError(f"{where}: no class folders in {split_dir}. Expected {split_dir}/CLASS/*.dcm, or pass "
                        "options.labels=labels.csv (file and label columns)")
    files = {d.name: dicom_files(d) for d in class_dirs}
    empty = [n for n, fs in files.items() if not fs]
    if empty:
        raise DataError(f"{where}: class folder(s) {', '.join(repr(str(split_dir / n)) for n in empty)} contain no "
                        f"DICOM files (looked for {', '.join(sorted(dcm.DICOM_SUFFIXES))} and extension-less "
                        "DICOM files)")
    return files


def _folder_layout(root: Path) -> tuple[dict[str, tuple[list[Path], np.ndarray]], list[str]]:
    split_dirs = folder.find_splits(root)
    scans = ({s: _scan_classes(d, f"dicom source ({s})") for s, d in split_dirs.items()} if split_dirs
             else {"train": _scan_classes(root, "dicom source")})
    classes = sorted(scans["train"])
    if len(classes) < 2:
        raise DataError(f"dicom source: found {len(classes)} class folder ({classes[0]!r}) in "
                        f"{split_dirs.get('train', root)}; need at least 2 classes")
    out = {}
    for s, found in scans.items():
        if sorted(found) != classes:
            raise DataError(f"dicom source: class folders of the {s} split ({', '.join(sorted(found))}) differ "
                            f"from train ({', '.join(classes)})")
        paths = [p for c in classes for p in found[c]]
        out[s] = (paths, np.array([i for i, c in enumerate(classes) for _ in found[c]], dtype=np.int64))
    return out, classes


def _labels_layout(root: Path, labels: str, csv_options: dict, strict: bool):
    from .manifest import csv_source

    manifest = Path(labels).expanduser()
    if not manifest.is_absolute() and not manifest.exists() and (root / manifest).exists():
        manifest = root / manifest
    if not manifest.is_file():
        raise DataError(f"dicom source: labels file {labels!r} not found (looked in {Path.cwd()} and {root})")
    src = csv_source(str(manifest), image_root=str(root), verify=False, strict=strict, channels=1, **csv_options)
    return src


def _inspect(paths: list[Path], *, window: dcm.Window, verify: bool, want_ids: bool, salt: str | None,
             strict: bool, where: str) -> tuple[np.ndarray, list[str | None], int | None]:
    """Read every file once: (good mask, pseudonymised patient id or None per file, channel guess)."""
    ok = np.ones(len(paths), dtype=bool)
    pids: list[str | None] = [None] * len(paths)
    failures: list[str] = []
    channels: int | None = None
    if not verify and not want_ids:
        to_read: range = range(min(1, len(paths)))
    else:
        to_read = range(len(paths))
    for i in to_read:
        name = str(paths[i])
        try:
            ds = dcm.read_dataset(paths[i], name, header_only=not verify)
            if verify:
                dcm.dataset_to_array(ds, name, window)
        except DataError as e:
            ok[i] = False
            failures.append(str(e))
            continue
        if want_ids:
            raw = dcm.raw_patient_id(ds)
            pids[i] = None if raw is None else dcm.patient_pseudonym(raw, salt)
        if channels is None:
            channels = 3 if int(ds.get("SamplesPerPixel", 1) or 1) == 3 else 1
    if failures:
        msg = f"{where}: {len(failures)} of {len(paths)} DICOM file(s) cannot be used: " + "; ".join(
            failures[:folder.MAX_LISTED]) + (f" ... ({len(failures) - folder.MAX_LISTED} more)"
                                             if len(failures) > folder.MAX_LISTED else "")
        if strict:
            raise DataError(msg)
        warnings.warn(msg + ". Skipping them (options.strict=true makes this an error).", stacklevel=3)
    return ok, pids, channels


def _tables_by_layout(root: Path, labels: str | None, opts: dict, strict: bool, notes: list[str]):
    """Per split (paths, labels, ids, groups), the class names, task and layout name."""
    if labels is None:
        given = [k for k in ("label_cols", "split_col", "group_col", "classes") if opts[k] is not None]
        if given:
            raise ConfigError(f"dicom source: option(s) {', '.join(given)} need options.labels (a label table); "
                              "without it the class is the folder name")
        found, class_names = _folder_layout(root)
        tables = {s: (paths, y, [p.relative_to(root).as_posix() for p in paths], None)
                  for s, (paths, y) in found.items()}
        return tables, class_names, "binary" if len(class_names) == 2 else "multiclass", "folders"
    src = _labels_layout(root, labels, opts, strict)
    notes += [n for n in src.notes or [] if "no group_col" not in n]
    tables = {s: (list(t.paths), t.labels, list(t.ids), t.groups) for s, t in src.splits.items() if t is not None}
    return tables, list(src.spec.class_names), src.spec.task, "labels"


def _patient_note(splits: dict, n_with_id: int, n_files: int) -> str:
    if n_with_id:
        return (f"patient groups from PatientID (keyed hash, never stored): {n_with_id} of {n_files} "
                "file(s) have one; the rest are their own group")
    for t in splits.values():
        if t is not None and t.groups is not None and all(str(g).startswith("file:") for g in t.groups):
            t.groups = None
    return "no DICOM file has a PatientID: held-out splits are by image, not by patient"


@SOURCES.register("dicom")
def dicom_source(arg: str, *, labels: str | None = None, path_col: str = "path", label_col: str | None = "label",
                 label_cols: list[str] | None = None, none_label: str | None = "normal",
                 classes: list[str] | None = None, split_col: str | None = None, group_col: str | None = None,
                 sheet: str | int = 0, window: str | list[float] = "file", group_by_patient: bool = True,
                 salt: str | None = None, verify: bool = True, strict: bool = False) -> SourceData:
    """DICOM files: ROOT/CLASS/*.dcm, or ROOT + labels=labels.csv; windowing; patient-grouped by PatientID hash.

    ``window``: ``file`` (VOI LUT / window centre+width of each file, else the full range) or
    ``[centre, width]``; ``group_by_patient`` groups files by a keyed hash of PatientID (``salt``, else
    ``$MEDCLS_PATIENT_SALT``); with ``labels``, the ``csv`` options ``path_col``, ``label_col``,
    ``label_cols``, ``none_label``, ``classes``, ``split_col``, ``group_col``, ``sheet`` apply
    (paths relative to ROOT).
    """
    win = dcm.parse_window(window, "data.options.window")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataError(f"dicom source: {root} " + ("does not exist" if not root.exists() else "is a file")
                        + " (expected a folder of DICOM files: ROOT/CLASS/*.dcm, or ROOT with options.labels)")
    root, notes = root.absolute(), []
    opts = {"path_col": path_col, "label_col": label_col, "label_cols": label_cols, "none_label": none_label,
            "classes": classes, "split_col": split_col, "group_col": group_col, "sheet": sheet}
    tables, class_names, task, layout = _tables_by_layout(root, labels, opts, strict, notes)
    splits: dict[str, DicomTable | None] = {"train": None, "val": None, "test": None}
    channels: int | None = None
    n_with_id = n_files = 0
    for s, (paths, y, ids, groups) in tables.items():
        want_ids = group_by_patient and groups is None
        ok, pids, ch = _inspect(paths, window=win, verify=verify, want_ids=want_ids, salt=salt, strict=strict,
                                where=f"{root} ({s})")
        channels = channels if channels is not None else ch
        keep = folder.readable_rows(ok, notes, s, str(root), skipped="unusable DICOM file(s)",
                                    none_read=f"{len(paths)} DICOM file(s)")
        if want_ids:
            n_with_id += sum(pids[i] is not None for i in keep)
            n_files += len(keep)
            groups = np.array([pids[i] or f"file:{ids[i]}" for i in range(len(paths))], dtype=object)
        splits[s] = DicomTable([paths[i] for i in keep], y[keep], [ids[i] for i in keep],
                               None if groups is None else np.asarray(groups)[keep], window=win)
    if group_by_patient and n_files:
        notes.append(_patient_note(splits, n_with_id, n_files))
    spec = DatasetSpec(name=root.name, task=task, class_names=tuple(class_names), channels=channels or 1,
                       extra={"source": "dicom", "root": str(root), "layout": layout,
                              "window": "file" if win is None else list(win)})
    return SourceData(spec, splits, notes)
