"""Caches of model-size images: in memory within a budget, on disk beyond it.

A cache holds what :meth:`Preprocess.stored` gives, the image at the model's size in its own dtype
(uint8, or uint16 for 16-bit sources; one channel for gray images whatever the model's channel count),
so a split costs its uint8 bytes at model size, not 4-12x that in float32. Conversion to float and
channel expansion happen per batch on the device (:meth:`Preprocess.finish`).

The disk cache is one ``.npy`` file per (split content, preprocessing), named by a digest of both, in
``data.cache_dir`` (default ``$MEDCLS_CACHE_DIR`` or ``~/.cache/medcls``). Runs, tuning trials, CV folds
and the DDP ranks of a node share it: the first process to take the file lock fills the rows it needs
(``<key>.done.npy`` records the rows on disk), the others wait and read it. Rows are written with
``pwrite`` and read with ``pread`` into each batch's buffer rather than through a memory map, so building
or reading a cache larger than memory does not count the whole file in the process's resident memory
(the page cache still keeps what fits).

MONAI's ``PersistentDataset`` keeps one pickle per sample; one fixed-stride file is what a
random-access batch reader wants (one ``pread`` per row, no unpickling), so this is written here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..choices import CacheMode, check_choice
from ..data.table import ArrayTable, FileTable, H5Table, ImageTable
from ..errors import ConfigError, DataError
from ..transforms import Preprocess
from ..utils import atomic_write_json, file_lock

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DISK_MARGIN = 1 << 30  # leave this much free on the cache's disk


# ----------------------------------------------------------------- what is cached
class StoredImages(Dataset):
    """(stored image, index) for each row of a table: decode (JPEG draft when allowed) + ``Preprocess.stored``."""

    def __init__(self, table: ImageTable, preprocess: Preprocess) -> None:
        self.table, self.preprocess = table, preprocess

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            img = self.table.load(i, draft=self.preprocess.draft)
            return self.preprocess.stored(img), i
        except DataError as e:
            raise DataError(f"{self.table.describe(i)}: {e}") from None

    def __getitems__(self, idx: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A batch at once (the DataLoader calls this when it exists): HDF5 reads consecutive rows together."""
        many = getattr(self.table, "load_many", None)
        try:
            if many is None:
                raise DataError("one at a time")
            images = many(idx, draft=self.preprocess.draft)
        except DataError:  # one by one, so the error names the image
            return [self[i] for i in idx]
        out = []
        for img, i in zip(images, idx, strict=True):
            try:
                out.append((self.preprocess.stored(img), i))
            except DataError as e:
                raise DataError(f"{self.table.describe(i)}: {e}") from None
        return out


def widest(items: list[torch.Tensor]) -> tuple[int, torch.dtype]:
    """The channel count and dtype every stored image of ``items`` fits in without loss."""
    c = max(t.shape[0] for t in items)
    dtypes = {t.dtype for t in items}
    dtype = torch.float32 if torch.float32 in dtypes else torch.uint16 if torch.uint16 in dtypes else torch.uint8
    return c, dtype


def coerce(x: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """Widen stored image(s) ``x`` (..., c, S, S) to ``channels`` and ``dtype`` keeping ``finish``'s result exact.

    Gray -> 3 channels repeats the plane (what ``finish`` does for a 3-channel model); uint8 -> uint16 is
    x 257 (v / 255 == 257 v / 65535, and IEEE division rounds both alike).
    """
    if x.shape[-3] != channels:
        if x.shape[-3] != 1:
            raise ValueError(f"cannot narrow {x.shape[-3]} channels to {channels}")
        x = x.expand(*x.shape[:-3], channels, *x.shape[-2:])
    if x.dtype == dtype:
        return x
    if x.dtype == torch.uint8 and dtype == torch.uint16:
        return (x.to(torch.int32) * 257).to(torch.uint16)
    if dtype == torch.float32:
        raise ValueError("cannot mix quantised and float stored images")
    raise ValueError(f"cannot narrow {x.dtype} to {dtype}")


def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack stored images of one batch, widened to the widest among them (mixed gray/RGB, 8/16-bit)."""
    xs = [b[0] for b in batch]
    c, dtype = widest(xs)
    return torch.stack([coerce(x, c, dtype) for x in xs]), torch.as_tensor([b[1] for b in batch])


def resolve_workers(num_workers: int | str, table: ImageTable) -> int:
    """``auto``: the usable cores (divided among the node's DDP ranks, at most 8) for files and HDF5; 0 for
    images already in memory, where a worker's start-up costs more than it saves."""
    if num_workers != "auto":
        return int(num_workers)
    if isinstance(table, ArrayTable):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, cores // max(1, ranks)))


def fill(table: ImageTable, preprocess: Preprocess, out, *, workers: int, what: str) -> None:
    """Write ``stored(image i)`` into ``out[i]`` for every row, decoding on ``workers`` processes.

    ``out`` is a tensor or an array of the widest shape/dtype; raises :class:`_Wider` when an image needs
    more (then the caller reallocates and starts again).
    """
    n = len(table)
    loader = DataLoader(StoredImages(table, preprocess), batch_size=64, num_workers=workers, collate_fn=collate,
                        prefetch_factor=4 if workers else None)
    c, dtype = out.shape[1], _torch_dtype(out.dtype)
    t0 = last = time.perf_counter()
    done = 0
    for x, idx in loader:
        if x.shape[1] > c or (dtype == torch.uint8 and x.dtype == torch.uint16):
            raise _Wider(max(c, x.shape[1]), x.dtype if x.dtype != torch.uint8 else dtype)
        x = coerce(x, c, dtype)
        lo, hi = int(idx[0]), int(idx[-1]) + 1  # batches arrive in order: a contiguous slice
        out[lo:hi] = x if isinstance(out, torch.Tensor) else x.numpy()
        done = hi
        if time.perf_counter() - last > 10:
            last = time.perf_counter()
            rate = done / (last - t0)
            log.info("caching %s: %d/%d images (%.0f/s, %.0f s left)", what, done, n, rate, (n - done) / rate)
    log.info("cached %s: %d images in %.1f s (%s)", what, n, time.perf_counter() - t0, _size(_nbytes(out)))


class _Wider(Exception):
    def __init__(self, channels: int, dtype: torch.dtype) -> None:
        super().__init__(f"{channels} channels, {dtype}")
        self.channels, self.dtype = channels, dtype


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16,
            np.dtype(np.float32): torch.float32}[np.dtype(dtype)]


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype({torch.uint8: np.uint8, torch.uint16: np.uint16, torch.float32: np.float32}[dtype])


def _nbytes(out) -> int:
    return int(out.nbytes)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


# ----------------------------------------------------------------- layout of a split's cache
def probe(table: ImageTable, preprocess: Preprocess) -> tuple[tuple[int, int, int], torch.dtype]:
    """Shape and dtype of one stored image, from the first row (the cache widens if later rows need it)."""
    if len(table) == 0:
        raise DataError("cannot cache an empty split")
    x = StoredImages(table, preprocess)[0][0]
    return tuple(x.shape), x.dtype


def split_bytes(n: int, shape: tuple[int, int, int], dtype: torch.dtype) -> int:
    return n * int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()


def memory_budget(setting: float | str) -> int:
    """Bytes the memory caches of a run may take: ``auto`` is half the memory available now, shared
    among the node's DDP ranks (each holds its own copy); a number is GiB."""
    if setting != "auto":
        return int(float(setting) * (1 << 30))
    avail = _available_memory()
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return int(avail * 0.5 / max(1, ranks))


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return 4 << 30


def cache_dir(setting: str | None) -> Path:
    if setting:
        return Path(setting).expanduser()
    env = os.environ.get("MEDCLS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medcls"


# ----------------------------------------------------------------- keys
def table_fingerprint(table: ImageTable) -> str:
    """A digest of what the table's images are: file paths with size and mtime, HDF5 file + rows, or the
    pixels of in-memory arrays. Changes when a file is replaced or the split's membership or order changes."""
    h = hashlib.sha256(type(table).__name__.encode())
    if isinstance(table, FileTable):
        for p in table.paths:
            st = p.stat()
            h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    elif isinstance(table, H5Table):
        st = table.path.stat()
        h.update(f"{table.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{table.key}\n".encode())
        h.update(np.ascontiguousarray(table.rows).tobytes())
    elif isinstance(table, ArrayTable):
        a = np.ascontiguousarray(table.images)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(memoryview(a).cast("B"))
    else:
        h.update("\n".join(table.ids).encode())
    return h.hexdigest()


def cache_key(table: ImageTable, preprocess: Preprocess) -> str:
    spec = {"version": CACHE_VERSION, "preprocess": preprocess.cfg.to_dict(), "table": table_fingerprint(table)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ----------------------------------------------------------------- the two caches
class MemoryCache:
    """The split's stored images in one tensor."""

    kind = "memory"

    def __init__(self, table: ImageTable, preprocess: Preprocess, *, workers: int, what: str) -> None:
        shape, dtype = probe(table, preprocess)
        while True:
            self.x = torch.empty((len(table), *shape), dtype=dtype)
            try:
                fill(table, preprocess, self.x, workers=workers, what=what)
                return
            except _Wider as w:
                shape, dtype = (w.channels, *shape[1:]), w.dtype

    @property
    def nbytes(self) -> int:
        return _nbytes(self.x)

    def read(self, idx: np.ndarray) -> torch.Tensor:
        return self.x[torch.from_numpy(np.asarray(idx, dtype=np.int64))]


class DiskCache:
    """The stored images of a split's source table in ``<dir>/<key>.npy``, filled row by row as runs need
    them and shared (see the module docstring).

    The key names the *source* table the split was cut from (``table.base``) and the preprocessing, so
    train/val splits, CV folds and tuning trials over one source share one file; ``<key>.done.npy``
    marks the rows already written (saved atomically after the rows are flushed, so a crash mid-build
    leaves rows to fill, never rows taken as done).
    """

    kind = "disk"

    def __init__(self, table: ImageTable, preprocess: Preprocess, *, folder: Path, workers: int, what: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        base = table.base if table.base is not None else table
        self.rows = table.base_rows if table.base is not None else np.arange(len(table))
        key = cache_key(base, preprocess)
        self.path = folder / f"{key}.npy"
        self.built = False  # True in the process that wrote rows for this split
        with file_lock(folder / f"{key}.lock", f"the cache of {what}", holder="another process building it",
                       wait=True):
            self.built = self._fill(base, preprocess, workers=workers, what=what)
        if not self.built:
            log.info("cache of %s: reusing %s", what, self.path)
        mm = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.offset = mm.shape, mm.dtype, mm.offset
        del mm
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._fd: int | None = None
        self._pid: int | None = None

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.row_bytes

    def _fill(self, base: ImageTable, preprocess: Preprocess, *, workers: int, what: str) -> bool:
        """Write the rows of this split that are not in the file yet; True if there were any."""
        done_path = self.path.with_suffix(".done.npy")
        done = np.load(done_path) if done_path.is_file() and self.path.is_file() else None
        if done is not None and done[self.rows].all():
            return False
        fresh = done is None  # no record of finished rows: whatever file is there is rewritten
        if fresh:
            shape, dtype = probe(base, preprocess)
            done = np.zeros(len(base), bool)
        else:
            mm = np.load(self.path, mmap_mode="r")
            shape, dtype = mm.shape[1:], _torch_dtype(mm.dtype)
            del mm
        missing = np.unique(self.rows[~done[self.rows]])
        while True:
            _check_space(self.path.parent, split_bytes(len(missing), shape, dtype), what)
            log.info("caching %s on disk: %d images (%s) in %s", what, len(missing),
                     _size(split_bytes(len(missing), shape, dtype)), self.path)
            if fresh:  # the .npy header and a sparse file of the full size; rows are written with pwrite
                header = np.lib.format.open_memmap(self.path, mode="w+", dtype=_np_dtype(dtype), shape=(len(base), *shape))
                del header
            out = _RowsOut(self.path, missing)
            try:
                fill(_Rows(base, missing), preprocess, out, workers=workers, what=what)
            except _Wider as w:  # an image needs more channels or bits than the file has: start it again
                out.close()
                self.path.unlink()
                done[:] = False
                fresh, missing = True, np.unique(self.rows)
                shape, dtype = (w.channels, *shape[1:]), w.dtype
                continue
            except BaseException:  # an unreadable image, Ctrl-C ...: the rows written so far stay not done
                out.close()
                raise
            out.close(sync=True)  # the rows are on disk before they are marked done
            done[missing] = True
            _save_atomic(done_path, done)
            atomic_write_json(self.path.with_suffix(".json"), {
                "version": CACHE_VERSION, "images": len(base), "done": int(done.sum()), "shape": list(shape),
                "dtype": str(_np_dtype(dtype)), "preprocess": preprocess.cfg.to_dict(), "first": base.describe(0),
                "updated": time.time()})
            return True

    def read(self, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` of the split (one ``pread`` each, into the batch's own buffer)."""
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        flat = out.reshape(len(idx), -1).view(np.uint8)
        for k, j in enumerate(self.rows[np.asarray(idx, dtype=np.int64)]):
            got = os.preadv(self._fd, [flat[k]], self.offset + int(j) * self.row_bytes)
            if got != self.row_bytes:
                raise DataError(f"cache {self.path} is truncated (row {j}); delete it and run again")
        return torch.from_numpy(out)

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)


class _Rows(ImageTable):
    """Rows ``rows`` of ``table``, as a table (what a cache fill decodes)."""

    def __init__(self, table: ImageTable, rows: np.ndarray) -> None:
        self.table, self.rows = table, rows
        self.labels = np.zeros(len(rows), np.int64)
        self.ids, self.groups = [], None

    def load(self, i: int, *, draft: int | None = None) -> np.ndarray:
        return self.table.load(int(self.rows[i]), draft=draft)

    def load_many(self, idx, *, draft: int | None = None):
        if hasattr(self.table, "load_many"):
            return self.table.load_many(self.rows[np.asarray(idx)], draft=draft)
        return [self.load(i, draft=draft) for i in idx]

    def describe(self, i: int) -> str:
        return self.table.describe(int(self.rows[i]))


class _RowsOut:
    """Writes ``file[rows[lo:hi]] = x`` for ``fill`` (which writes consecutive slices) with one ``pwrite`` per
    row: unlike a memory map, the written pages are not counted in the building process's resident memory
    (a 7 GB PCam cache would otherwise show as 7 GB of RSS while it is built)."""

    def __init__(self, path: Path, rows: np.ndarray) -> None:
        mm = np.load(path, mmap_mode="r")
        self.offset, self.dtype, row_shape = mm.offset, mm.dtype, mm.shape[1:]
        del mm
        self.rows = rows
        self.shape = (len(rows), *row_shape)
        self.row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
        self.nbytes = len(rows) * self.row_bytes
        self.path = path
        self.fd: int | None = os.open(path, os.O_WRONLY)

    def __setitem__(self, sl: slice, x: np.ndarray) -> None:
        flat = np.ascontiguousarray(x, dtype=self.dtype).reshape(len(x), -1).view(np.uint8)
        for k, j in enumerate(self.rows[sl]):
            if os.pwrite(self.fd, flat[k], self.offset + int(j) * self.row_bytes) != self.row_bytes:
                raise OSError(f"short write to the cache {self.path}: is the disk full?")

    def close(self, sync: bool = False) -> None:
        if self.fd is not None:
            try:
                if sync:
                    os.fsync(self.fd)
            finally:
                os.close(self.fd)
                self.fd = None


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    import io

    from ..utils import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


def _check_space(folder: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < need + DISK_MARGIN:
        raise ConfigError(f"the disk cache of {what} needs {_size(need)} in {folder}, which has {_size(free)} free "
                          f"(and {_size(DISK_MARGIN)} is left spare): set data.cache_dir to a larger disk, or "
                          f"data.cache=off to decode every epoch")


def build_cache(table: ImageTable, preprocess: Preprocess, *, mode: str, budget: MemoryBudget, folder: Path,
                workers: int, what: str) -> MemoryCache | DiskCache | None:
    """The cache ``mode`` asks for (``auto``: memory within the budget, else disk when it has room, else none)."""
    check_choice(mode, CacheMode, "data.cache")
    if mode == "off" or len(table) == 0:
        return None
    if mode in ("memory", "on"):
        cache = MemoryCache(table, preprocess, workers=workers, what=what)
        budget.take(cache.nbytes)
        return cache
    if mode == "disk":
        return DiskCache(table, preprocess, folder=folder, workers=workers, what=what)
    shape, dtype = probe(table, preprocess)
    need = split_bytes(len(table), shape, dtype)
    if budget.fits(need):
        return build_cache(table, preprocess, mode="memory", budget=budget, folder=folder, workers=workers, what=what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _check_space(folder, need, what)
    except (ConfigError, OSError) as e:
        log.warning("not caching %s (%s over the memory budget of %s): %s", what, _size(need), _size(budget.left), e)
        return None
    return build_cache(table, preprocess, mode="disk", budget=budget, folder=folder, workers=workers, what=what)


class MemoryBudget:
    """Bytes left for memory caches; the splits of a run draw on one budget."""

    def __init__(self, total: int) -> None:
        self.left = total

    def fits(self, n: int) -> bool:
        return n <= self.left

    def take(self, n: int) -> None:
        self.left -= n
