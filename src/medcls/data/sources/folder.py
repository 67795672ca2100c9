"""Image folders as a data source: ``folder:/path/to/root``.

Two layouts are understood:

* **with splits** (Kaggle "Chest X-Ray Images (Pneumonia)"):
  ``ROOT/{train,val,test}/{CLASS}/*.jpeg`` (``valid``/``validation`` also name
  the validation split; val and test are optional);
* **flat**: ``ROOT/{CLASS}/*`` (everything is train; :func:`~medcls.data.sources.load_data`
  holds out val and test).

Class names are the sorted class-folder names. Patient ids are taken from the
file names (``person12_bacteria_3.jpeg`` -> ``person12``, ``NORMAL2-IM-0001-0001.jpeg``
-> ``IM-0001``) so held-out splits never share a patient with train.

The helpers :func:`check_images` and :func:`check_channels` are shared with
the ``csv`` source.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError
from ..groups import KAGGLE_PATIENT_PATTERNS, patient_groups  # noqa: F401 (re-exported)
from ..images import IMAGE_SUFFIXES, read_image
from ..probe import probe_image
from ..spec import DatasetSpec
from ..table import FileTable
from .registry import SOURCES, SourceData

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MAX_LISTED = 10


def short_list(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    """``a, b, c`` for at most ``limit`` items, then ``... (N more)``."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" ... ({len(items) - limit} more)" if len(items) > limit else "")


def visible_dirs(path: Path) -> list[Path]:
    """Sub-folders of ``path``, skipping hidden ones and macOS ``__MACOSX`` debris."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; hidden files are skipped."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def check_channels(channels: int | None) -> None:
    """Reject a ``channels`` option other than 1 (gray) or 3 (RGB)."""
    if channels is not None and channels not in (1, 3):
        raise ConfigError(f"option channels must be 1 (gray) or 3 (RGB), got {channels!r}")


VERIFY_MODES = ("header", "decode", "off")


def verify_mode(verify: bool | str) -> str:
    """``options.verify``: ``header`` (default; also ``true``), ``decode`` or ``off`` (also ``false``)."""
    if isinstance(verify, bool):
        return "header" if verify else "off"
    if isinstance(verify, str) and verify.strip().lower() in VERIFY_MODES:
        return verify.strip().lower()
    raise ConfigError(f"option verify must be one of {', '.join(VERIFY_MODES)} (or true/false), got {verify!r}")


def _check_one(path: Path, mode: str) -> int:
    """Channels (1 or 3) of one image, from its header or (``decode``) its pixels; DataError if unreadable."""
    if mode == "decode":
        return 1 if read_image(path).ndim == 2 else 3
    return probe_image(path).channels


def check_images(paths: Sequence[Path], *, verify: bool | str, strict: bool,
                 where: str) -> tuple[np.ndarray, int | None]:
    """Check every image (``verify``, see :func:`verify_mode`) and return (mask of good files, channel guess).

    ``header`` reads headers only (:func:`medcls.data.probe.probe_image`: not an image, empty, truncated
    JPEG/PNG), ``decode`` decodes every image, ``off`` checks none. The channel guess (1 or 3) comes from
    the first readable image (``None`` when nothing could be read). Unreadable files raise a
    :class:`DataError` listing them when ``strict``; otherwise they are reported with ``warnings.warn``
    and masked out.
    """
    mode = verify_mode(verify)
    ok = np.ones(len(paths), dtype=bool)
    guess: int | None = None
    failures: list[str] = []
    if mode == "decode" and len(paths) > 500:
        log.info("decoding %d images in %s (options.verify=header reads headers only)", len(paths), where)
    for i in range(len(paths)) if mode != "off" else ():
        try:
            ch = _check_one(paths[i], mode)
        except DataError as e:
            ok[i] = False
            failures.append(str(e))
            continue
        guess = ch if guess is None else guess
    for p in paths[:20] if mode == "off" else ():  # unchecked: the first readable header gives the channels
        try:
            guess = probe_image(p).channels
            break
        except DataError:
            continue
    if failures:
        msg = f"{where}: {len(failures)} of {len(paths)} image(s) cannot be read: " + "; ".join(failures[:MAX_LISTED])
        if len(failures) > MAX_LISTED:
            msg += f" ... ({len(failures) - MAX_LISTED} more)"
        if strict:
            raise DataError(msg)
        warnings.warn(msg + ". Skipping them (options.strict=true makes this an error).", stacklevel=3)
    return ok, guess


def readable_rows(ok: np.ndarray, notes: list[str], split: str, where: str, *, skipped: str,
                  none_read: str) -> np.ndarray:
    """Indices of the readable files of one split; notes how many were skipped, refuses an empty split."""
    if not ok.all():
        notes.append(f"{split}: skipped {int((~ok).sum())} {skipped}")
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        raise DataError(f"{where} ({split}): none of the {none_read} could be read")
    return keep


def find_splits(root: Path) -> dict[str, Path]:
    """Map our split names to folders; an empty dict means the flat layout."""
    dirs = visible_dirs(root)
    split_dirs = [d for d in dirs if d.name.lower() in SPLIT_NAMES]
    if not split_dirs:
        return {}
    copies = [d for d in dirs if d not in split_dirs and any(c.name.lower() in SPLIT_NAMES for c in visible_dirs(d))]
    if copies:  # the Kaggle archive holds chest_xray/chest_xray/{train,val,test}, a duplicate
        warnings.warn(f"{root}: ignoring {', '.join(d.name for d in copies)} (a nested copy with its own split "
                      "folders)", stacklevel=3)
    others = [d.name for d in dirs if d not in split_dirs and d not in copies]
    if others:
        raise DataError(
            f"{root} mixes split folders ({', '.join(d.name for d in split_dirs)}) with other folders "
            f"({short_list(others)}). Expected either ROOT/{{train,val,test}}/CLASS/image or ROOT/CLASS/image."
        )
    found: dict[str, Path] = {}
    for d in split_dirs:
        split = SPLIT_NAMES[d.name.lower()]
        if split in found:
            raise DataError(f"{root}: both {found[split].name!r} and {d.name!r} name the {split} split; keep one")
        found[split] = d
    if "train" not in found:
        raise DataError(f"{root} has split folder(s) {', '.join(sorted(p.name for p in found.values()))} "
                        "but no 'train' folder")
    return found


def _scan_split(folder: Path, where: str) -> dict[str, list[Path]]:
    """Class name -> image files for one split folder; raises on empty class folders."""
    class_dirs = visible_dirs(folder)
    if not class_dirs:
        loose = _image_files(folder)
        hint = f" (it holds {len(loose)} image file(s) directly; put them in one folder per class)" if loose else ""
        raise DataError(f"{where}: no class folders in {folder}{hint}. Expected {folder}/CLASS/image files.")
    nested = [d for d in class_dirs if any(c.name.lower() in SPLIT_NAMES for c in visible_dirs(d))]
    if nested:
        raise DataError(f"{where}: {nested[0]} holds split folders ({', '.join(c.name for c in visible_dirs(nested[0]))})"
                        f", so it is not a class folder. It looks like a nested dataset: try folder:{nested[0]}")
    files = {d.name: _image_files(d) for d in class_dirs}
    if not any(files.values()):
        raise DataError(f"{where}: no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))} "
                        f"files in {len(class_dirs)} class folder(s): {short_list([d.name for d in class_dirs])})")
    empty = [name for name, fs in files.items() if not fs]
    if empty:
        raise DataError(f"{where}: class folder(s) {', '.join(repr(str(folder / n)) for n in empty)} contain no "
                        f"images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _classes(scans: dict[str, dict[str, list[Path]]], train_dir: Path) -> list[str]:
    """The class names (train's folders, sorted); every split must have the same class folders."""
    classes = sorted(scans["train"])
    if len(classes) < 2:
        raise DataError(f"folder source: found {len(classes)} class folder ({classes[0]!r}) in "
                        f"{train_dir}; need at least 2 classes")
    for s, found in scans.items():
        if sorted(found) != classes:
            missing = sorted(set(classes) - set(found))
            extra = sorted(set(found) - set(classes))
            raise DataError(
                f"class folders of the {s} split ({', '.join(sorted(found))}) differ from train ({', '.join(classes)})"
                + (f"; missing: {', '.join(missing)}" if missing else "") + (f"; extra: {', '.join(extra)}" if extra else "")
            )
    return classes


def _split_table(root: Path, split: str, found: dict[str, list[Path]], classes: list[str], notes: list[str], *,
                 verify: bool | str, strict: bool, patient_regex: str | None) -> tuple[FileTable, int | None]:
    """One split's readable images as a table (patient groups from the file names when they match), and the
    channel count guessed from its first image."""
    paths = [p for c in classes for p in found[c]]
    labels = np.array([i for i, c in enumerate(classes) for _ in found[c]], dtype=np.int64)
    ids = [p.relative_to(root).as_posix() for p in paths]
    ok, guess = check_images(paths, verify=verify, strict=strict, where=f"{root} ({split})")
    keep = readable_rows(ok, notes, split, str(root), skipped="unreadable image(s)", none_read=f"{len(paths)} image(s)")
    groups, matched = patient_groups(ids, patient_regex)
    if matched == 0:
        if patient_regex is not None:
            warnings.warn(f"patient_regex {patient_regex!r} matched none of the {len(ids)} file names in the "
                          f"{split} split; splitting by image", stacklevel=3)
        groups = None
    elif split == "train":
        notes.append(f"patient ids from file names: {matched} of {len(ids)} train files matched "
                     f"(unmatched files are their own group)")
    table = FileTable([paths[i] for i in keep], labels[keep], [ids[i] for i in keep],
                      None if groups is None else groups[keep])
    return table, guess


@SOURCES.register("folder")
def folder_source(arg: str, *, verify: bool | str = "header", strict: bool = False,
                  patient_regex: str | None = None, channels: int | None = None) -> SourceData:
    """Class-per-folder images: ROOT/{train,val,test}/CLASS/* or ROOT/CLASS/*.

    ``verify``: ``header`` (default) reads every image's header at scan time, ``decode``
    decodes every image, ``off`` checks none (unreadable ones are skipped with a warning,
    or raise with ``strict``; what a header cannot show fails when the image is read); ``patient_regex`` extracts a patient
    id from file names (first capture group) for group-aware splits; ``channels``
    overrides the channel count guessed from the first image.
    """
    check_channels(channels)
    verify_mode(verify)  # a bad value fails before the scan
    root = Path(arg).expanduser()
    if not root.exists():
        raise DataError(f"folder source: {root} does not exist (expected a folder with class or split sub-folders)")
    if not root.is_dir():
        raise DataError(f"folder source: {root} is a file, expected a folder with class or split sub-folders")
    root = root.absolute()  # tables must not depend on the working directory
    split_dirs = find_splits(root)
    layout = "splits" if split_dirs else "flat"
    scans = {s: _scan_split(d, f"{s} split") for s, d in split_dirs.items()} if split_dirs else {
        "train": _scan_split(root, "folder source")}

    classes = _classes(scans, split_dirs.get("train", root))
    notes: list[str] = []
    splits: dict[str, FileTable | None] = {"train": None, "val": None, "test": None}
    guess: int | None = None
    for s, found in scans.items():
        splits[s], g = _split_table(root, s, found, classes, notes, verify=verify, strict=strict,
                                    patient_regex=patient_regex)
        guess = guess if guess is not None else g
    n_channels = channels if channels is not None else (guess or 1)
    spec = DatasetSpec(name=root.resolve().name, task="binary" if len(classes) == 2 else "multiclass",
                       class_names=tuple(classes), channels=n_channels,
                       extra={"source": "folder", "root": str(root), "layout": layout})
    return SourceData(spec, splits, notes)
