"""MedMNIST ``.npz`` files (any flag, any size) read with our own reader.

The files are looked up in ``data_dir``, then ``$MEDCLS_DATA_DIR``, then
``./data`` (also in a ``medmnist/`` subfolder of each). When absent they are
downloaded from MedMNIST's official Zenodo record and checked against the
official MD5; a checksum is verified only on download.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from ...errors import DataError, did_you_mean
from ...utils import current_umask, file_md5
from ..spec import DatasetSpec
from ..table import ArrayTable
from .medmnist_info import INFO, URL_TEMPLATE
from .registry import SOURCES, SourceData, default_data_dirs

log = logging.getLogger(__name__)

SIZES = (28, 64, 128, 224)
KEYS = tuple(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))


def npz_name(flag: str, size: int = 28) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _check_flag(flag: str, size: int) -> None:
    if flag not in INFO:
        raise DataError(f"unknown MedMNIST dataset {flag!r}.{did_you_mean(flag, INFO)} Known: {', '.join(INFO)}")
    if size not in SIZES:
        raise DataError(f"MedMNIST size must be one of {SIZES}, got {size}")


def find_npz(flag: str, size: int = 28, data_dir: str | Path | None = None) -> Path | None:
    name = npz_name(flag, size)
    for d in default_data_dirs(data_dir):
        for cand in (d / name, d / "medmnist" / name):
            if cand.is_file():
                return cand
    return None


def download_npz(flag: str, size: int, dest_dir: Path, *, timeout: float = 30.0) -> Path:
    """Download ``flag`` at ``size`` from the official record and verify its MD5."""
    _check_flag(flag, size)
    url = URL_TEMPLATE.format(flag=flag, suffix="" if size == 28 else f"_{size}")
    expected = INFO[flag]["md5"][size]
    dest = dest_dir / npz_name(flag, size)
    dest_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", url, dest)
    fd, tmp_name = tempfile.mkstemp(suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(fd, "wb") as out:
            shutil.copyfileobj(resp, out, length=1 << 20)
        got = file_md5(tmp)
        if got != expected:
            raise DataError(f"download of {url} is corrupt: MD5 {got}, expected {expected}. Try again.")
        tmp.chmod(0o666 & ~current_umask())  # mkstemp makes it 0600; the dataset is for everyone who may read data/
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def locate_or_download(flag: str, size: int = 28, data_dir: str | Path | None = None, *, download: bool = True) -> Path:
    _check_flag(flag, size)
    found = find_npz(flag, size, data_dir)
    if found:
        return found
    dirs = default_data_dirs(data_dir)
    name, url = npz_name(flag, size), URL_TEMPLATE.format(flag=flag, suffix="" if size == 28 else f"_{size}")
    put = (f"put it at {dirs[0].resolve() / name} (or in the folder named by --data-dir, data.data_dir or "
           f"$MEDCLS_DATA_DIR); the official copy is {url} (MD5 {INFO[flag]['md5'][size]})")
    if not download:
        raise DataError(f"{name} not found: {put}")
    try:
        return download_npz(flag, size, dirs[0])
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise DataError(f"{name} is not on this machine and could not be downloaded "
                        f"({type(e).__name__}: {getattr(e, 'reason', e)}): {put}") from None



def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read the six split arrays of a MedMNIST npz, with clear errors on wrong content."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise DataError(
                    f"{path} is not a MedMNIST npz: missing keys {missing}; it has {sorted(z.files)}. "
                    f"Expected {list(KEYS)}."
                )
            arrays = {k: z[k] for k in KEYS}
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable .npz file ({type(e).__name__}: {e})") from None
    for s in ("train", "val", "test"):
        im, lab = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        if im.ndim not in (3, 4) or (im.ndim == 4 and im.shape[-1] not in (1, 3)):
            raise DataError(f"{path}: {s}_images must be (N,H,W) or (N,H,W,3), got {im.shape}")
        if len(im) != len(lab):
            raise DataError(f"{path}: {len(im)} {s}_images but {len(lab)} {s}_labels")
        if im.dtype != np.uint8:
            raise DataError(f"{path}: {s}_images must be uint8, got {im.dtype}")
    return arrays


@SOURCES.register("medmnist", help="MedMNIST v2/+ npz: medmnist:<flag>, options: size (28|64|128|224), path, download, "
                  "labels (class/label names of a custom file)")
def medmnist_source(arg: str, *, data_dir: str | None = None, size: int = 28, path: str | None = None,
                    download: bool = True, labels: list[str] | None = None) -> SourceData:
    """MedMNIST dataset ``arg`` (e.g. pneumoniamnist) at ``size`` px, official splits.

    ``labels`` renames the classes (multi-label: the label columns), e.g. for a
    custom file in the layout of ``chestmnist`` with fewer than its 14 findings.
    """
    flag = arg.lower()
    _check_flag(flag, size)
    info = INFO[flag]
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(c, str) for c in labels)):
        raise DataError(f"data.options.labels must be a list of class names, got {labels!r}")
    names = list(labels) if labels is not None else list(info["labels"])
    npz = Path(path) if path else locate_or_download(flag, size, data_dir, download=download)
    if not npz.is_file():
        raise DataError(f"MedMNIST file not found: {npz}")
    arrays = read_npz(npz)
    task = info["task"]
    splits = {}
    for s in ("train", "val", "test"):
        images = arrays[f"{s}_images"]
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        lab = arrays[f"{s}_labels"]
        if task == "multilabel":
            if lab.ndim != 2 or lab.shape[1] != len(names):
                raise DataError(f"{npz}: {s}_labels has shape {lab.shape}, expected (N, {len(names)}) multi-hot "
                                f"columns {names}; name the columns of a custom file with data.options.labels")
            if not np.isin(lab, (0, 1)).all():
                raise DataError(f"{npz}: {s}_labels must be multi-hot 0/1, got values "
                                f"{sorted(set(np.unique(lab).tolist()) - {0, 1})[:5]}")
            y = lab.astype(np.float32)
        else:
            y = lab.reshape(len(lab), -1)[:, 0].astype(np.int64)
            bad = y[(y < 0) | (y >= len(names))]
            if bad.size:
                raise DataError(f"{npz}: {s}_labels hold {sorted(set(bad.tolist()))}, "
                                f"expected 0..{len(names) - 1}")
        splits[s] = ArrayTable(images, y, ids=[f"{s}/{i}" for i in range(len(images))])
    channels = 3 if arrays["train_images"].ndim == 4 else 1
    spec = DatasetSpec(name=flag if size == 28 else f"{flag}_{size}", task=task, class_names=tuple(names),
                       channels=channels, ordinal=bool(info.get("ordinal", False)),
                       native_size=int(arrays["train_images"].shape[1]),
                       extra={"license": info.get("license", ""), "file": str(npz)})
    return SourceData(spec, splits)
