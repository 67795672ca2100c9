"""Image tables: one split of a dataset as (image loader, labels, ids, groups).

A table never holds more than it must: :class:`ArrayTable` wraps arrays already
in memory (MedMNIST), :class:`FileTable` reads image files on demand and
:class:`H5Table` reads single rows of an HDF5 dataset lazily.

Any table may carry per-sample metadata (``meta``: a DataFrame, one row per
sample in table order; e.g. every column of a CSV/Excel manifest, or BTXRD's
age/gender/site/view) that ``subset`` keeps aligned; multimodal models read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError


class ImageTable:
    """Base class. ``labels`` is ``(N,)`` int64 class indices or ``(N, K)`` float32 multi-hot.

    A table made by ``subset`` remembers the table it came from first (``base``) and its rows there
    (``base_rows``), so caches can be shared by every split, fold and trial cut from one source table.
    Subclasses implement ``_take`` (the new table of some rows); ``subset`` adds the bookkeeping.
    """

    labels: np.ndarray
    ids: list[str]
    groups: np.ndarray | None
    meta: pd.DataFrame | None = None
    base: ImageTable | None = None
    base_rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int, *, draft: int | None = None) -> np.ndarray:
        """Return image ``i`` as (H, W) or (H, W, C), uint8 or uint16.

        ``draft``: the size the image is going to (see :func:`medcls.data.images.decode_image`); tables
        that do not decode JPEGs ignore it.
        """
        raise NotImplementedError

    def subset(self, idx: Sequence[int] | np.ndarray) -> ImageTable:
        """Rows ``idx`` of this table as a new table that records ``base`` and ``base_rows``."""
        rows = np.asarray(idx, dtype=np.int64)
        new = self._take(rows)
        new.base = self if self.base is None else self.base
        new.base_rows = rows if self.base is None else self.base_rows[rows]
        return new

    def _take(self, idx: np.ndarray) -> ImageTable:
        """Rows ``idx`` (int64) of this table as a new table of the same kind; what ``subset`` builds on."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        return self.ids[i]

    def _sub(self, idx: np.ndarray) -> dict:
        out = {
            "labels": self.labels[idx],
            "ids": [self.ids[j] for j in idx],
            "groups": None if self.groups is None else self.groups[idx],
        }
        if self.meta is not None:  # only then: subclasses without a ``meta`` argument keep working
            out["meta"] = self.meta.iloc[idx]
        return out

    def _set_meta(self, meta: pd.DataFrame | None) -> None:
        if meta is not None and len(meta) != len(self.labels):
            raise DataError(f"got {len(meta)} metadata rows for {len(self.labels)} samples")
        self.meta = None if meta is None else meta.reset_index(drop=True)


def _check_lengths(n: int, ids: Sequence[str], groups: np.ndarray | None) -> None:
    if len(ids) != n:
        raise DataError(f"got {len(ids)} ids for {n} labels")
    if groups is not None and len(groups) != n:
        raise DataError(f"got {len(groups)} group ids for {n} labels")


class ArrayTable(ImageTable):
    """Images held in memory as one ``(N, H, W[, C])`` array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, ids: Sequence[str] | None = None,
                 groups: np.ndarray | None = None, meta: pd.DataFrame | None = None) -> None:
        if len(images) != len(labels):
            raise DataError(f"got {len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels)
        self.ids = list(ids) if ids is not None else [f"#{i}" for i in range(len(images))]
        self.groups = groups
        _check_lengths(len(self.labels), self.ids, groups)
        self._set_meta(meta)

    def load(self, i: int, *, draft: int | None = None) -> np.ndarray:
        return self.images[i]

    def _take(self, idx: np.ndarray) -> ImageTable:
        return ArrayTable(self.images[idx], **self._sub(idx))


class FileTable(ImageTable):
    """Images stored as files (PNG, JPEG, TIFF, BMP ...), read on demand."""

    def __init__(self, paths: Sequence[str | Path], labels: np.ndarray, ids: Sequence[str] | None = None,
                 groups: np.ndarray | None = None, meta: pd.DataFrame | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels)
        if len(self.paths) != len(self.labels):
            raise DataError(f"got {len(self.paths)} paths but {len(self.labels)} labels")
        self.ids = list(ids) if ids is not None else [str(p) for p in self.paths]
        self.groups = groups
        _check_lengths(len(self.labels), self.ids, groups)
        self._set_meta(meta)

    def load(self, i: int, *, draft: int | None = None) -> np.ndarray:
        from .images import read_image

        return read_image(self.paths[i], draft=draft)

    def _take(self, idx: np.ndarray) -> ImageTable:
        return FileTable([self.paths[j] for j in idx], **self._sub(idx))


class H5Table(ImageTable):
    """Rows of an HDF5 image dataset, opened lazily (once per process) and read one at a time."""

    def __init__(self, path: str | Path, key: str, rows: np.ndarray, labels: np.ndarray,
                 ids: Sequence[str] | None = None, groups: np.ndarray | None = None,
                 meta: pd.DataFrame | None = None) -> None:
        self.path = Path(path)
        self.key = key
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels)
        if len(self.rows) != len(self.labels):
            raise DataError(f"got {len(self.rows)} rows but {len(self.labels)} labels")
        self.ids = list(ids) if ids is not None else [f"{self.path.name}[{r}]" for r in self.rows]
        self.groups = groups
        _check_lengths(len(self.labels), self.ids, groups)
        self._set_meta(meta)
        self._files: dict[int, object] = {}  # pid -> this process's h5py.File

    def _dataset(self):
        """The dataset through this process's own handle, opened on first use.

        Keyed by pid: a forked DataLoader worker inherits the parent's dict but opens its own handle (HDF5
        state shared across fork reads wrong rows or hangs) and leaves the parent's entry alone, so the
        inherited handle is never closed from the child either.
        """
        import os

        import h5py

        pid = os.getpid()
        f = self._files.get(pid)
        if f is None or not f.id.valid:
            f = self._files[pid] = h5py.File(self.path, "r")
        return f[self.key]

    def load(self, i: int, *, draft: int | None = None) -> np.ndarray:
        return np.asarray(self._dataset()[int(self.rows[i])])

    def load_many(self, idx: Sequence[int], *, draft: int | None = None) -> list[np.ndarray]:
        """Images ``idx`` in one read per run of consecutive rows (a cache build reads whole chunks, not one
        row per HDF5 call)."""
        rows = self.rows[np.asarray(idx, dtype=np.int64)]
        ds, out, lo = self._dataset(), [], 0
        while lo < len(rows):
            hi = lo + 1
            while hi < len(rows) and rows[hi] == rows[hi - 1] + 1:
                hi += 1
            out.extend(ds[int(rows[lo]) : int(rows[hi - 1]) + 1])
            lo = hi
        return out

    def _take(self, idx: np.ndarray) -> ImageTable:
        return H5Table(self.path, self.key, self.rows[idx], **self._sub(idx))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}  # handles never travel to another process
        return state
