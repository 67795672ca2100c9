"""HDF5 image arrays as a data source: ``hdf5:/path/to/pcam`` or ``hdf5:/path/to/file.h5``.

Made for PatchCamelyon (Veeling et al. 2018, CC0): a folder with
``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``, where ``x`` is
``(N, 96, 96, 3)`` uint8 and ``y`` is ``(N, 1, 1, 1)`` uint8. The train ``x``
file is ~7 GB, so images are never read whole: each split is an
:class:`~medcls.data.table.H5Table` that reads one row at a time. Only the
labels are read into memory.

Label semantics (PCam): a patch is positive (``tumor``, 1) iff its centre
32x32 pixel region contains at least one pixel of tumour tissue. The outer
region only provides context: tumour there does not make a patch positive, so
models see the full 96x96 patch, and only geometric augmentations that keep the
centre at the centre (the ``histology`` preset: rot90 x flips, no shifts or
crops) preserve the label. Colour varies with the scanning centre: see
``transforms.stain`` (Macenko/Reinhard stain normalisation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError, did_you_mean
from ..spec import DatasetSpec
from ..table import H5Table
from .registry import SOURCES, SourceData

PCAM_CLASSES = ("normal", "tumor")
# file split name -> our split name
SPLIT_FILES = {"train": "train", "valid": "val", "test": "test"}


def _open(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"cannot open {path} as HDF5 ({e})") from None


def _dataset(f, key: str, path: Path, option: str):
    import h5py

    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        keys = [k for k in f if isinstance(f[k], h5py.Dataset)]
        raise DataError(f"{path.name}: no dataset {key!r} (option {option}).{did_you_mean(key, keys)} "
                        f"Datasets in the file: {', '.join(keys) or 'none'}")
    return obj


def _check_pair(x_path: Path, y_path: Path, x_key: str, y_key: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Validate x (metadata only) and read y whole; return (labels (N,) int64, x shape)."""
    with _open(x_path) as fx:
        x = _dataset(fx, x_key, x_path, "x_key")
        shape, dtype = tuple(x.shape), x.dtype
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 3)) or dtype != np.uint8:
        raise DataError(f"{x_path.name}[{x_key!r}]: expected uint8 images of shape (N, H, W) or (N, H, W, 3), "
                        f"got {dtype} {shape}")
    with _open(y_path) as fy:
        y = np.asarray(_dataset(fy, y_key, y_path, "y_key")[()])
    if y.ndim == 0 or (y.ndim > 1 and int(np.prod(y.shape[1:])) != 1):
        raise DataError(f"{y_path.name}[{y_key!r}]: expected one label per image, shape (N,), (N, 1) or "
                        f"(N, 1, 1, 1), got {y.shape}")
    y = y.reshape(len(y))
    if len(y) != shape[0]:
        raise DataError(f"{x_path.name} has {shape[0]} images but {y_path.name} has {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer) and not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
        raise DataError(f"{y_path.name}[{y_key!r}]: labels must be integers, got {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DataError(f"{y_path.name}[{y_key!r}]: negative labels {sorted(set(y[y < 0].tolist()))[:5]}")
    return y, shape


def _split_files(root: Path, pattern: str) -> dict[str, tuple[Path, Path]]:
    """Split name -> (x file, y file) for the files that exist; train is required."""
    if "{split}" not in pattern:
        raise ConfigError(f"option pattern must contain '{{split}}' (and '{{xy}}' when x and y are separate "
                          f"files), got {pattern!r}")
    found: dict[str, tuple[Path, Path]] = {}
    for file_split, split in SPLIT_FILES.items():
        x_path = root / pattern.format(split=file_split, xy="x")
        y_path = root / pattern.format(split=file_split, xy="y")
        for p in {x_path, y_path}:
            gz = p.with_name(p.name + ".gz")
            if not p.exists() and gz.exists():
                raise DataError(f"{gz} is compressed: decompress it first (gunzip -k {gz})")
        if x_path.is_file() and y_path.is_file():
            found[split] = (x_path, y_path)
        elif x_path.is_file() or y_path.is_file():
            have, lack = (x_path, y_path) if x_path.is_file() else (y_path, x_path)
            raise DataError(f"found {have.name} but not {lack.name} in {root}")
    if "train" not in found:
        h5 = sorted(p.name for p in root.glob("*.h5"))
        raise DataError(f"{root}: no training files {pattern.format(split='train', xy='x')} / "
                        f"{pattern.format(split='train', xy='y')}"
                        + (f". HDF5 files here: {', '.join(h5[:10])} (set options.pattern)" if h5 else ""))
    return found


@SOURCES.register("hdf5")
def hdf5_source(arg: str, *, x_key: str = "x", y_key: str = "y",
                pattern: str = "camelyonpatch_level_2_split_{split}_{xy}.h5",
                classes: list[str] | None = None) -> SourceData:
    """HDF5 image arrays read lazily, e.g. PatchCamelyon (label: tumour in the centre 32x32 px; train/valid/test).

    ``arg`` is a folder holding ``pattern`` files for the splits train/valid/test
    (valid becomes our val; ``{xy}`` is replaced by x and y), or one ``.h5`` file
    holding both ``x_key`` images and ``y_key`` labels (used as train only).

    PCam labels: a patch is positive (``tumor``) when its centre 32x32 pixel
    region holds at least one pixel of tumour tissue; tumour in the outer ring
    does not change the label. Default ``classes`` are ``["normal", "tumor"]``
    for 0/1 labels (binary, positive = tumor), otherwise ``"0" .. "K-1"``.
    """
    root = Path(arg).expanduser()
    if not root.exists():
        raise DataError(f"hdf5 source: {root} does not exist (expected a folder of PCam .h5 files or one .h5 file)")
    root = root.absolute()  # tables must not depend on the working directory
    files = _split_files(root, pattern) if root.is_dir() else {"train": (root, root)}
    loaded = {s: (x_path, *_check_pair(x_path, y_path, x_key, y_key)) for s, (x_path, y_path) in files.items()}

    if len(loaded["train"][1]) == 0:
        raise DataError(f"{loaded['train'][0]}: the training file holds no images")
    max_label = max(int(y.max()) for _, y, _ in loaded.values() if len(y))
    if classes is None:
        names = list(PCAM_CLASSES) if max_label <= 1 else [str(i) for i in range(max_label + 1)]
    else:
        names = [str(c) for c in classes]
        if max_label >= len(names):
            raise DataError(f"labels go up to {max_label} but options.classes names only {len(names)} classes: {names}")
    shapes = {tuple(shape[1:]) for _, _, shape in loaded.values()}
    if len(shapes) > 1:
        raise DataError(f"image shapes differ between splits: {sorted(shapes)}")
    h, w, *c = next(iter(shapes))
    splits: dict[str, H5Table | None] = {"train": None, "val": None, "test": None}
    for s, (x_path, y, _) in loaded.items():
        splits[s] = H5Table(x_path, x_key, np.arange(len(y)), y)
    spec = DatasetSpec(name=root.stem if root.is_file() else root.name, task="binary" if len(names) == 2 else "multiclass",
                       class_names=tuple(names), channels=c[0] if c else 1, native_size=h if h == w else None,
                       extra={"source": "hdf5", "root": str(root)})
    notes = [f"hdf5: official split(s) {', '.join(loaded)}; images read lazily from {x_key!r}"]
    return SourceData(spec, splits, notes)
