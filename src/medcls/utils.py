"""Small shared helpers: atomic writes, JSON, hashing, nested dicts, output folders, file locks."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def current_umask() -> int:
    """The process umask, read without changing it (``/proc``), else by the set-and-restore dance."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    The file gets the mode a plain ``open(path, "w")`` would give (``0o666 & ~umask``), not
    mkstemp's 0600, so colleagues and service accounts can read what medcls writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a failed write names no file: name the target
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


@contextmanager
def atomic_writer(path: str | Path, *, binary: bool = False) -> Iterator[Any]:
    """A file (text: UTF-8, newlines as written; or ``binary``) written bit by bit and put in place at ``path`` when the with-block
    ends without an error, like :func:`atomic_write_bytes` (temp file in the same folder, fsync, the umask's
    mode, ``os.replace``): for output too large to hold in memory. An error or interrupt leaves no file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


TEMP_PATTERNS = (".*.tmp", ".bundle-*")


def leftover_temp_files(folder: str | Path) -> list[Path]:
    """Temporary files and staging folders that a killed atomic write left in ``folder`` and its
    subfolders (``.name.XXXX.tmp`` from :func:`atomic_write_bytes`, ``.bundle-*`` staging folders)."""
    folder = Path(folder)
    return [p for pattern in TEMP_PATTERNS for p in folder.rglob(pattern)]


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default, allow_nan=True)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj) + "\n")


def nested_items(d: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(key path, value)`` of every leaf of nested dicts, depth first in insertion order (an empty dict is a
    leaf)."""
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            yield from nested_items(v, (*path, str(k)))
        else:
            yield (*path, str(k)), v


def flatten(d: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """Nested dicts as one level: ``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``."""
    return {sep.join(path): v for path, v in nested_items(d)}


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def file_md5(path: str | Path) -> str:
    return file_digest(path, "md5")


def file_sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")


def new_staging_dir(parent: str | Path, prefix: str) -> Path:
    """A fresh hidden folder in ``parent`` for assembling output that is renamed into place when complete;
    its mode follows the umask (``0o777 & ~umask``, where ``tempfile.mkdtemp`` gives 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    tmp.chmod(0o777 & ~current_umask())
    return tmp


def check_new_output(out: str | Path, what: str | None, *, hint: str = "choose another -o",
                     empty_dir_ok: bool = False) -> None:
    """Refuse to overwrite ``out``: it must not exist (with ``empty_dir_ok``, an empty folder is fine too).

    Otherwise one :class:`~medcls.errors.RunError` line ``"<out> already exists[ and is not empty]; <hint>
    (<what> are never overwritten)"``; ``what=None`` leaves out the parenthesis (outputs --force may replace).
    """
    from .errors import RunError

    out = Path(out)
    if not out.exists() or (empty_dir_ok and out.is_dir() and not any(out.iterdir())):
        return
    state = " and is not empty" if empty_dir_ok else ""
    never = f" ({what} are never overwritten)" if what else ""
    raise RunError(f"{out} already exists{state}; {hint}{never}")


def place_staged(tmp: Path, out: Path) -> None:
    """Rename the finished staging folder ``tmp`` to ``out`` (an empty folder there, allowed by
    :func:`check_new_output`, is replaced): the output is complete or absent."""
    if out.exists():
        out.rmdir()
    tmp.rename(out)


def new_unique_dir(root: str | Path, name: str, what: str = "directory") -> Path:
    """Create ``root/<name>-<YYYYmmdd-HHMMSS>[-k]`` and return it; an existing directory is never reused."""
    from .errors import RunError

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        p = root / (f"{name}-{stamp}" + (f"-{k}" if k else ""))
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue
    raise RunError(f"could not create a new {what} under {root}")


@contextmanager
def file_lock(path: str | Path, what: str, *, holder: str = "another process", hint: str = "",
              wait: bool = False) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (which records the holder's pid) for the with-block.

    When another process holds it, the line is ``"<what> is in use by <holder> (pid N); <hint>"``: raised as
    a :class:`~medcls.errors.RunError`, or with ``wait`` logged before blocking until the lock is free. The
    file is removed on exit; a holder that dies without exiting the block releases the lock with its process.
    """
    import fcntl

    path = Path(path)
    fd = _take_lock(path, what, holder, hint, wait)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # first: a process waiting on this file sees it gone and locks a new one
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _take_lock(path: Path, what: str, holder: str, hint: str, wait: bool) -> int:
    """The open, locked descriptor of ``path``, once the file locked is still the one at ``path``."""
    import fcntl

    from .errors import RunError

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
                line = f"{what} is in use by {holder}" + (f" (pid {pid})" if pid.isdigit() else "")
                if not wait:
                    raise RunError(line + (f"; {hint}" if hint else "")) from None
                log.info("%s; waiting (%s)", line, path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_file_at(fd, path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed the file as it released it: lock the one at path now


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is (still) the file at ``path``."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def url_name(path: str | Path) -> str:
    """A folder's name as a URL path segment and model name (``/v2/models/<name>``, a Triton repository)."""
    import re

    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).resolve().name).strip("-.")
    return name or "model"
