"""Streaming batch prediction: inputs of any number -> decoded and preprocessed in DataLoader workers -> the
:class:`~medcls.inference.Predictor` -> result dicts, one batch at a time.

Nothing here holds more than a batch of results: the input list (ids and how to load each) is the only thing
that grows with the archive. The results are the Predictor's own (:meth:`Predictor.predict_batch`, the code
``Predictor.predict`` runs), so a streamed row carries the same probabilities, decision and OOD flag.

Inputs are image files, folders of them (recursive, sorted), list files (one path per line) and medcls data
sources (``hdf5:PATH``, ``folder:PATH``, ``medmnist:NAME`` ...: every sample of the chosen splits, read through
the source's table, so an HDF5 archive predicts without exporting images).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artefact import findings_text
from ..data.images import IMAGE_SUFFIXES
from ..data.sources import SOURCES, SPLITS, call_source
from ..data.table import FileTable, ImageTable
from ..errors import DataError, MedclsError
from ..transforms import Preprocess
from .predictor import Predictor

SPLIT_CHOICES = ("all", *SPLITS)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """Processes that decode and predict (on a CPU): one per core, at most 8 (each holds a copy of the model)."""
    return min(8, cores())


# ------------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class Inputs:
    """The ordered inputs of a job: their ids (file paths or a source's sample ids) and the tables that load
    them (``starts``: the first input of each table)."""

    ids: list[str]
    tables: list[ImageTable]
    starts: np.ndarray

    @classmethod
    def of(cls, tables: Sequence[ImageTable]) -> Inputs:
        sizes = [len(t) for t in tables]
        return cls([i for t in tables for i in t.ids], list(tables), np.cumsum([0, *sizes[:-1]]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int, *, draft: int | None = None) -> np.ndarray:
        t = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.tables[t].load(i - int(self.starts[t]), draft=draft)

    def digest(self) -> str:
        """sha256 of the ordered ids, one per line: what a resumed job must match."""
        h = hashlib.sha256()
        for i in self.ids:
            h.update(i.encode("utf-8", "surrogateescape") + b"\n")
        return h.hexdigest()


def file_table(paths: Sequence[str]) -> FileTable:
    """Image files as a table (ids: the paths as given; no labels)."""
    return FileTable(list(paths), np.zeros(len(paths), np.int64), ids=list(paths))


def expand_folder(folder: Path) -> list[str]:
    """The image files under ``folder``, recursively, sorted by path."""
    found = [os.path.join(root, f) for root, _, files in os.walk(folder, followlinks=True)  # scandir: no stat per file
             for f in files if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]
    if not found:
        raise DataError(f"{folder}: no image files in this directory (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(found, key=lambda p: p.split(os.sep))  # by path component, as pathlib sorts


def read_list(list_file: str | Path, lines: Iterable[str] | None = None) -> list[str]:
    """The paths of a list file, one per line (blank lines and ``#`` comments skipped); a relative path is
    relative to the list file's folder (``-``: standard input, relative to the working directory). The
    paths are not checked here: a missing one is an error row of the job, like an unreadable one."""
    if str(list_file) == "-":
        base, text = Path(), list(lines if lines is not None else sys.stdin)
    else:
        p = Path(list_file)
        if not p.is_file():
            raise DataError(f"list file {p}: " + ("is a directory" if p.is_dir() else "no such file"))
        base, text = p.parent, p.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    out = [s.strip() for s in text]
    return [s if Path(s).is_absolute() or base == Path() else str(base / s)
            for s in out if s and not s.startswith("#")]


def source_tables(spec: str, split: str = "all") -> list[ImageTable]:
    """Every sample of the splits of a data source (``kind:argument``) that it has, train/val/test in order."""
    if split not in SPLIT_CHOICES:
        raise DataError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    kind, _, arg = spec.partition(":")
    src = call_source(kind.strip(), arg.strip(), None, {})
    tables = [t for s in SPLITS if split in ("all", s) and (t := src.splits.get(s)) is not None and len(t)]
    if not tables:
        raise DataError(f"{spec}: no samples" + ("" if split == "all" else f" in split {split!r}"))
    return tables


def is_source_spec(item: str) -> bool:
    """``kind:argument`` naming a registered data source (and not an existing file)."""
    kind, sep, arg = item.partition(":")
    return bool(sep and arg) and kind in SOURCES and not Path(item).exists()


def _item_paths(item: str) -> list[str] | None:
    """The image files an item names (itself, or a folder's images); None for a data source spec."""
    if is_source_spec(item):
        return None
    p = Path(item)
    if p.is_dir():
        return expand_folder(p)
    if p.is_file():
        return [item]
    kind, sep, _ = item.partition(":")
    if sep and len(kind) > 1 and "/" not in kind:
        raise DataError(f"image not found: {item} (no such file or directory, nor a data source: {kind!r} is not "
                        f"a source kind; kinds: {', '.join(SOURCES)})")
    raise DataError(f"image not found: {item} (no such file or directory)")


def _tables(items: Sequence[str], split: str) -> list[ImageTable]:
    """Files and folders in a row share one table; each data source brings its splits' tables."""
    tables: list[ImageTable] = []
    paths: list[str] = []
    for item in items:
        found = _item_paths(item)
        if found is not None:
            paths += found
            continue
        if paths:
            tables.append(file_table(paths))
            paths = []
        tables += source_tables(item, split)
    return [*tables, file_table(paths)] if paths else tables


def resolve_inputs(items: Sequence[str | Path], *, list_file: str | Path | None = None,
                   split: str = "all") -> Inputs:
    """The job's inputs in order: each item (file, folder, data source spec), then the list file's paths.

    A path given here that does not exist is an error now (a typo); a list file's entries are read when
    predicted (a missing one is an error row)."""
    if split not in SPLIT_CHOICES:
        raise DataError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    tables = _tables([str(i) for i in items], split)
    if list_file is not None:
        listed = read_list(list_file)
        if not listed:
            raise DataError(f"list file {list_file}: no paths in it")
        tables.append(file_table(listed))
    if not tables:
        raise DataError("no inputs: give image files, folders, a data source (e.g. hdf5:PATH) or --list FILE")
    return Inputs.of(tables)


# ------------------------------------------------------------------------------------------------ loading
def error_text(e: BaseException) -> str:
    return str(e) if isinstance(e, MedclsError) else f"{type(e).__name__}: {e}"


class DecodeDataset(torch.utils.data.Dataset):
    """Input ``i`` -> ``(i, preprocessed tensor, None)``, or ``(i, None, message)`` when it cannot be read or
    preprocessed: a bad file costs a row, never a worker or the run."""

    def __init__(self, inputs: Inputs, preprocess: Preprocess) -> None:
        self.inputs, self.preprocess = inputs, preprocess

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, self.preprocess(self.inputs.load(i, draft=self.preprocess.draft)), None
        except Exception as e:  # per-file boundary: whatever a decoder raises is that file's error row
            return i, None, error_text(e)


def collate(items: list[tuple[int, torch.Tensor | None, str | None]]
            ) -> tuple[list[int], torch.Tensor | None, list[str | None]]:
    """A batch: the indices, the good images stacked (in order), and the error of each (None when good)."""
    x = [t for _, t, _ in items if t is not None]
    return [i for i, _, _ in items], torch.stack(x) if x else None, [e for _, _, e in items]


def batch_ranges(lo: int, hi: int, batch_size: int) -> list[list[int]]:
    return [list(range(s, min(s + batch_size, hi))) for s in range(lo, hi, batch_size)]


_WORKER_PREDICTORS: dict[tuple, Predictor] = {}  # per DataLoader worker process: its one-thread copy


class PredictInWorker:
    """A ``collate_fn`` that predicts in the DataLoader worker: on a CPU each worker decodes its batch and runs
    a one-thread copy of the model, so no core waits on another (a decoder feeding a model in the main process
    leaves one side idle: 1.5x less throughput on 2 cores, benchmarks/RESULTS.md predict_scale)."""

    def __init__(self, load_args: dict[str, Any], ids: list[str], metadata: dict[str, Any] | None) -> None:
        self.load_args, self.ids, self.metadata = load_args, ids, metadata

    def predictor(self) -> Predictor:
        key = tuple(sorted((k, str(v)) for k, v in self.load_args.items()))
        if key not in _WORKER_PREDICTORS:
            from threadpoolctl import threadpool_limits

            torch.set_num_threads(1)
            threadpool_limits(1)  # BLAS too (the OOD distance): two BLAS threads per worker cost 25% on 2 cores
            _WORKER_PREDICTORS[key] = Predictor.load(**self.load_args, device=torch.device("cpu"), threads=1)
        return _WORKER_PREDICTORS[key]

    def __call__(self, items: list[tuple[int, torch.Tensor | None, str | None]]
                 ) -> tuple[list[int], list[dict[str, Any]]]:
        idx, x, errors = collate(items)
        return idx, predict_rows(self.predictor(), [self.ids[i] for i in idx], x, errors, self.metadata)


def predict_rows(pred: Predictor, names: list[str], x: torch.Tensor | None, errors: list[str | None],
                 metadata: dict[str, Any] | None) -> list[dict[str, Any]]:
    side, used = pred.encode_inputs(len(names), None if metadata is None else [metadata] * len(names))
    return pred.predict_batch(names, x, errors, side_inputs=side, used=used)


def in_workers(predictor: Predictor, num_workers: int) -> bool:
    """Whether the model runs in the decoding workers (on a CPU, with workers) rather than in this process."""
    return num_workers > 0 and predictor.device.type == "cpu" and predictor.load_args is not None


def stream(predictor: Predictor, inputs: Inputs, batches: Sequence[list[int]], *, num_workers: int,
           metadata: dict[str, Any] | None = None) -> Iterator[tuple[list[int], list[dict[str, Any]]]]:
    """(indices, result dicts) per batch of ``batches``, in order. With ``num_workers`` on a CPU each worker
    process decodes and predicts whole batches (:class:`PredictInWorker`); on a GPU the workers decode and the
    model runs here; with none, everything runs here. ``metadata`` (fused models) is used for every image."""
    dataset = DecodeDataset(inputs, predictor.preprocess)
    if in_workers(predictor, num_workers):
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                             collate_fn=PredictInWorker(predictor.load_args, inputs.ids, metadata))
        yield from loader
        return
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                                         pin_memory=predictor.device.type == "cuda")
    for idx, x, errors in loader:
        yield idx, predict_rows(predictor, [inputs.ids[i] for i in idx], x, errors, metadata)


# ------------------------------------------------------------------------------------------------ rows
def columns(class_names: Sequence[str]) -> list[str]:
    """The prediction table's columns (``medcls predict --csv`` and ``-o DIR``)."""
    return ["file", *(f"prob_{c}" for c in class_names), "predicted", "ood", "ood_score"]


def ood_text(r: dict[str, Any]) -> str:
    """The out-of-distribution column: flagged / ok, or n/a for a model without a gate."""
    ood = r.get("ood") or {}
    return "n/a" if not ood.get("available") else ("flagged" if ood["flagged"] else "ok")


def number(v: float | None) -> str:
    """A float as text, the same every run: the shortest form that reads back to the same double."""
    return "" if v is None else repr(float(v))


def predicted_text(r: dict[str, Any]) -> str:
    """The decision as text (multilabel: the labels at or above their thresholds, ";"-joined, or no finding)."""
    return r["predicted"] if isinstance(r["predicted"], str) else findings_text(r["predicted"])


def table_row(r: dict[str, Any]) -> list[str]:
    """A result dict as the row of :func:`columns` (text)."""
    return [r["file"], *map(number, r["probabilities"].values()), predicted_text(r), ood_text(r),
            number((r.get("ood") or {}).get("score"))]


def error_line(r: dict[str, Any]) -> str:
    """``<file>: <message>`` of an error result (decode errors name their file already)."""
    msg = r["error"]["message"]
    return msg if r["file"] in msg else f"{r['file']}: {msg}"


def error_message(r: dict[str, Any]) -> str:
    """An error result's message without its leading ``<file>: `` (for a table that has the file already)."""
    msg, prefix = r["error"]["message"], f"{r['file']}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg

