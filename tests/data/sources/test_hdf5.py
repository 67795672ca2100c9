"""The ``hdf5`` source on small PatchCamelyon-style files, read lazily."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from medcls.config import DataConfig
from medcls.data.sources import load_data
from medcls.data.sources.hdf5 import hdf5_source
from medcls.data.table import H5Table
from medcls.errors import ConfigError, DataError

PATTERN = "camelyonpatch_level_2_split_{split}_{xy}.h5"


def _write(path: Path, key: str, arr: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=arr, chunks=(1, *arr.shape[1:]) if arr.ndim == 4 else None)


def make_pcam(root: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5 with x (N,96,96,3) uint8, y (N,1,1,1) uint8."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (sizes or {"train": 16, "valid": 8, "test": 8}).items():
        x = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        y = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
        _write(root / PATTERN.format(split=split, xy="x"), "x", x)
        _write(root / PATTERN.format(split=split, xy="y"), "y", y)
        out[split] = (x, y)
    return out


@pytest.fixture
def read_spy(monkeypatch):
    """Record every ``h5py.Dataset.__getitem__`` selection as (dataset name, shape of what was read)."""
    calls: list[tuple[str, tuple[int, ...]]] = []
    original = h5py.Dataset.__getitem__

    def spy(self, args, *rest, **kw):
        out = original(self, args, *rest, **kw)
        calls.append((self.name, np.shape(out)))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    return calls


def test_pcam_folder_is_read_lazily(tmp_path, read_spy):
    arrays = make_pcam(tmp_path / "pcam")
    data = load_data(DataConfig(source=f"hdf5:{tmp_path / 'pcam'}", min_val_size=1))
    assert data.spec.task == "binary" and data.spec.class_names == ("normal", "tumor")
    assert data.spec.positive_index == 1 and data.spec.channels == 3 and data.spec.native_size == 96
    assert (len(data.train), len(data.val), len(data.test)) == (16, 8, 8)
    assert isinstance(data.train, H5Table)
    np.testing.assert_array_equal(data.train.labels, np.arange(16) % 2)
    # loading read the labels whole but not a single image
    assert ("/y", (16, 1, 1, 1)) in read_spy
    assert [c for c in read_spy if c[0] == "/x"] == []
    read_spy.clear()
    x_train = arrays["train"][0]
    np.testing.assert_array_equal(data.train.load(5), x_train[5])
    np.testing.assert_array_equal(data.test.load(3), arrays["test"][0][3])
    assert read_spy == [("/x", (96, 96, 3)), ("/x", (96, 96, 3))]  # one row per load


def test_h5table_pickles_and_subsets(tmp_path):
    arrays = make_pcam(tmp_path / "pcam", {"train": 10})
    table = hdf5_source(str(tmp_path / "pcam")).splits["train"]
    table.load(0)  # opens the file handle, which must not be pickled
    clone = pickle.loads(pickle.dumps(table))
    np.testing.assert_array_equal(clone.load(7), arrays["train"][0][7])
    sub = clone.subset([9, 2])
    assert isinstance(sub, H5Table) and list(sub.labels) == [1, 0]
    np.testing.assert_array_equal(sub.load(0), arrays["train"][0][9])
    assert sub.describe(1).endswith("_train_x.h5[2]")


class _RowsWithPid(torch.utils.data.Dataset):
    """(image, pid of the reading process, pid its handle was opened in) for each row of a table."""

    def __init__(self, table: H5Table) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        img = self.table.load(i)
        return torch.from_numpy(img), os.getpid(), sorted(self.table._files)


def test_h5table_in_two_forked_dataloader_workers(tmp_path):  # spawned workers: see the pickling test above
    arrays = make_pcam(tmp_path / "pcam", {"train": 12})
    table = hdf5_source(str(tmp_path / "pcam")).splits["train"]
    parent = table.load(0)  # the parent holds an open handle before the workers start
    loader = torch.utils.data.DataLoader(_RowsWithPid(table), batch_size=3, num_workers=2,
                                         multiprocessing_context="fork", collate_fn=list)
    rows = [r for batch in loader for r in batch]
    np.testing.assert_array_equal(np.stack([r[0].numpy() for r in rows]), arrays["train"][0])
    workers = {r[1] for r in rows}
    assert len(workers) == 2 and os.getpid() not in workers
    for _, pid, opened in rows:  # each worker reads through a handle it opened itself
        assert pid in opened and all(p in (pid, os.getpid()) for p in opened)
    assert list(table._files) == [os.getpid()] and table._files[os.getpid()].id.valid  # parent's handle intact
    np.testing.assert_array_equal(table.load(0), parent)


def test_single_file_is_train_only(tmp_path):
    path = tmp_path / "patches.h5"
    x = np.zeros((12, 32, 32), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f["images"] = x
        f["labels"] = np.array([0, 1, 2] * 4, dtype=np.int64)
    src = hdf5_source(str(path), x_key="images", y_key="labels")
    assert src.splits["val"] is None and src.splits["test"] is None
    assert src.spec.task == "multiclass" and src.spec.class_names == ("0", "1", "2")
    assert src.spec.channels == 1 and src.spec.name == "patches"
    src = hdf5_source(str(path), x_key="images", y_key="labels", classes=["a", "b", "c"])
    assert src.spec.class_names == ("a", "b", "c")
    with pytest.raises(DataError, match=r"labels go up to 2 but options\.classes names only 2"):
        hdf5_source(str(path), x_key="images", y_key="labels", classes=["a", "b"])


@pytest.mark.parametrize("y_shape", [(8,), (8, 1)])
def test_label_shapes(tmp_path, y_shape):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((8, 16, 16, 3), dtype=np.uint8)
        f["y"] = (np.arange(8) % 2).reshape(y_shape).astype(np.uint8)
    assert list(hdf5_source(str(path)).splits["train"].labels) == [0, 1] * 4


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        hdf5_source(str(tmp_path / "nope"))
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((8, 16, 16, 3), dtype=np.uint8)
        f["y"] = np.zeros((7, 1, 1, 1), dtype=np.uint8)
        f["xf"] = np.zeros((8, 16, 16, 3), dtype=np.float32)
        f["x4"] = np.zeros((8, 16, 16, 4), dtype=np.uint8)
        f["y2"] = np.zeros((8, 2), dtype=np.uint8)
    with pytest.raises(DataError, match=r"has 8 images but d\.h5 has 7 labels"):
        hdf5_source(str(path))
    with pytest.raises(DataError, match=r"expected uint8 images of shape \(N, H, W\) or \(N, H, W, 3\), got float32"):
        hdf5_source(str(path), x_key="xf")
    with pytest.raises(DataError, match=r"got uint8 \(8, 16, 16, 4\)"):
        hdf5_source(str(path), x_key="x4")
    with pytest.raises(DataError, match=r"one label per image.*got \(8, 2\)"):
        hdf5_source(str(path), y_key="y2")
    with pytest.raises(DataError, match=r"no dataset 'X' \(option x_key\).*Datasets in the file: x, x4, xf, y, y2"):
        hdf5_source(str(path), x_key="X")
    (tmp_path / "not.h5").write_bytes(b"plain text")
    with pytest.raises(DataError, match=r"cannot open .*not\.h5 as HDF5"):
        hdf5_source(str(tmp_path / "not.h5"))


def test_folder_errors(tmp_path):
    make_pcam(tmp_path / "pcam", {"train": 4, "test": 4})
    (tmp_path / "pcam" / PATTERN.format(split="test", xy="y")).unlink()
    with pytest.raises(DataError, match=r"found camelyonpatch_level_2_split_test_x\.h5 but not .*_test_y\.h5"):
        hdf5_source(str(tmp_path / "pcam"))
    with pytest.raises(ConfigError, match=r"must contain '\{split\}'"):
        hdf5_source(str(tmp_path / "pcam"), pattern="data.h5")
    with pytest.raises(DataError, match=r"no training files.*HDF5 files here: .*set options.pattern"):
        hdf5_source(str(tmp_path / "pcam"), pattern="other_{split}_{xy}.h5")


def test_gzipped_download_is_explained(tmp_path):
    root = tmp_path / "pcam"
    make_pcam(root, {"train": 2})
    x = root / PATTERN.format(split="train", xy="x")
    x.with_name(x.name + ".gz").write_bytes(gzip.compress(x.read_bytes()))
    x.unlink()
    with pytest.raises(DataError, match="is compressed: decompress it first"):
        hdf5_source(str(root))


def test_unknown_option(tmp_path):
    make_pcam(tmp_path / "pcam", {"train": 2})
    with pytest.raises(ConfigError, match=r"data\.options\.xkey.*Did you mean 'x_key'"):
        load_data(DataConfig(source=f"hdf5:{tmp_path / 'pcam'}", options={"xkey": "x"}))


def test_pcam_label_semantics_are_documented(capsys):
    import medcls.data.sources.hdf5 as mod
    from medcls.cli.main import main

    assert "centre\n32x32 pixel region contains at least one pixel of tumour tissue" in mod.__doc__
    assert "outer\nregion only provides context" in mod.__doc__
    assert main(["datasets"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("hdf5"))
    assert "PatchCamelyon" in line and "centre 32x32" in line


def test_compressed_pcam_stays_lazy_through_stain_preprocessing(tmp_path, read_spy):
    """Real PCam files are gzip-chunked; batches with a stain step read at most a batch of rows at a time."""
    from medcls.engine.loader import Batches
    from medcls.transforms import Preprocess, PreprocessConfig

    root = tmp_path / "pcam"
    root.mkdir()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 200, size=(12, 96, 96, 3), dtype=np.uint8)
    for split, n in (("train", 12), ("valid", 6), ("test", 6)):
        with h5py.File(root / PATTERN.format(split=split, xy="x"), "w") as f:
            f.create_dataset("x", data=x[:n], chunks=(1, 96, 96, 3), compression="gzip")
        with h5py.File(root / PATTERN.format(split=split, xy="y"), "w") as f:
            f.create_dataset("y", data=(np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1))
    data = load_data(DataConfig(source=f"hdf5:{root}", min_val_size=1))
    assert [c for c in read_spy if c[0] == "/x"] == []
    pre = Preprocess(PreprocessConfig(size=32, in_chans=3, stain="reinhard",
                                      stain_params={"lab_mean": [60.0, 30.0, -20.0], "lab_std": [20.0, 15.0, 12.0]}))
    batches = Batches(data.train, pre, batch_size=5, cache="off", num_workers=0)  # reads seen in this process
    xs = torch.cat([b[0] for b in batches.iterate()])
    assert xs.shape == (12, 3, 32, 32)
    reads = [c[1] for c in read_spy if c[0] == "/x"]
    rows = [1 if len(s) == 3 else s[0] for s in reads]
    assert sum(rows) == 12 and max(rows) <= 5 and all(s[-3:] == (96, 96, 3) for s in reads)
    assert torch.equal(xs[3], pre(x[3]))
