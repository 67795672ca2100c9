"""Caches of model-size images: dtype and bytes, identical tensors on every path, disk reuse and keys."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from medcls.data.images import decode_image, read_image
from medcls.data.table import ArrayTable, FileTable
from medcls.engine import cache as C
from medcls.engine.loader import Batches
from medcls.errors import ConfigError
from medcls.transforms import Preprocess, PreprocessConfig


def _files(folder, n=12, size=(90, 70), rgb_every=0, sixteen_every=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        if sixteen_every and i % sixteen_every == 1:
            a, p = rng.integers(0, 65535, size, dtype=np.uint16), folder / f"{i}.png"
        elif rgb_every and i % rgb_every == 1:
            a, p = rng.integers(0, 255, (*size, 3), dtype=np.uint8), folder / f"{i}.png"
        else:
            a, p = rng.integers(0, 255, size, dtype=np.uint8), folder / f"{i}.jpg"
        Image.fromarray(a).save(p)
        paths.append(p)
    return FileTable(paths, np.arange(n) % 2)


def _all(b: Batches) -> torch.Tensor:
    return torch.cat([x for x, _, _ in b.iterate()])


def _pre(size=32, in_chans=3, **kw) -> Preprocess:
    return Preprocess(PreprocessConfig(size=size, in_chans=in_chans, **kw))


def test_stored_is_uint8_gray_once_and_finish_matches_call():
    pre = _pre(in_chans=3)
    img = np.random.default_rng(1).integers(0, 255, (50, 40), dtype=np.uint8)
    s = pre.stored(img)
    assert s.dtype == torch.uint8 and s.shape == (1, 32, 32)  # gray kept once for a 3-channel model
    x = pre(img)
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert torch.equal(pre.finish(s.unsqueeze(0))[0], x)
    s16 = pre.stored(img.astype(np.uint16) * 200)
    assert s16.dtype == torch.uint16


def test_legacy_preprocess_config_keeps_float_tensors():
    old = {"size": 32, "in_chans": 1, "clahe": False, "clahe_clip": 2.0, "clahe_grid": 8, "intensity": "dtype",
           "stain": "none", "stain_params": None}  # written before quantize / jpeg_draft existed
    cfg = PreprocessConfig.from_dict(old)
    assert not cfg.quantize and not cfg.jpeg_draft
    s = Preprocess(cfg).stored(np.full((50, 50), 7, np.uint8))
    assert s.dtype == torch.float32


def test_memory_cache_bytes_are_uint8_at_model_size(tmp_path):
    table = _files(tmp_path / "img", n=10)
    b = Batches(table, _pre(in_chans=3), batch_size=4, cache="memory", num_workers=0)
    assert b.cache.kind == "memory"
    assert b.cache.nbytes == 10 * 1 * 32 * 32  # not 10 x 3 x 32 x 32 x 4
    assert _all(b).shape == (10, 3, 32, 32)


def test_every_path_gives_identical_tensors(tmp_path):
    table = _files(tmp_path / "img", n=13, rgb_every=4, sixteen_every=5)  # mixed gray/RGB and 8/16-bit
    pre = _pre(in_chans=3)
    ref = torch.stack([pre(table.load(i, draft=pre.draft)) for i in range(len(table))])
    for kw in ({"cache": "off", "num_workers": 0}, {"cache": "off", "num_workers": 2},
               {"cache": "memory", "num_workers": 2}, {"cache": "disk", "num_workers": 0,
                                                        "cache_dir": str(tmp_path / "c")}):
        b = Batches(table, pre, batch_size=5, **kw)
        assert torch.equal(_all(b), ref), kw
    disk = Batches(table, pre, batch_size=5, cache="disk", cache_dir=str(tmp_path / "c"))
    assert disk.cache.dtype == np.uint16 and disk.cache.shape[1:] == (3, 32, 32)  # widened to fit all


def test_disk_cache_is_reused_and_keyed_by_content_and_preprocessing(tmp_path, caplog):
    table = _files(tmp_path / "img", n=6)
    d = str(tmp_path / "c")
    first = Batches(table, _pre(), batch_size=4, cache="disk", cache_dir=d)
    assert first.cache.built
    again = Batches(table, _pre(), batch_size=4, cache="disk", cache_dir=d)
    assert not again.cache.built and again.cache.path == first.cache.path
    other_size = Batches(table, _pre(size=24), batch_size=4, cache="disk", cache_dir=d)
    assert other_size.cache.built and other_size.cache.path != first.cache.path
    os.utime(table.paths[0], ns=(1, 1))  # a file replaced: a new key
    changed = Batches(table, _pre(), batch_size=4, cache="disk", cache_dir=d)
    assert changed.cache.built and changed.cache.path != first.cache.path
    assert torch.equal(_all(changed), _all(first))
    assert not list((tmp_path / "c").glob("*partial*"))


_BUILD = """
import sys, numpy as np
from pathlib import Path
from medcls.data.table import FileTable
from medcls.engine.cache import DiskCache
from medcls.transforms import Preprocess, PreprocessConfig
paths = sys.argv[2:]
c = DiskCache(FileTable(paths, np.zeros(len(paths), int)), Preprocess(PreprocessConfig(size=32, in_chans=3)),
              folder=Path(sys.argv[1]), workers=0, what="x")
print(c.built)
"""


def test_concurrent_processes_build_the_disk_cache_once(tmp_path):
    table = _files(tmp_path / "img", n=40, size=(200, 180))
    cmd = [sys.executable, "-c", _BUILD, str(tmp_path / "c"), *map(str, table.paths)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    built = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert built == ["False", "True"]


def test_auto_uses_memory_within_budget_then_disk_then_off(tmp_path, monkeypatch, caplog):
    table = _files(tmp_path / "img", n=8)
    pre = _pre()
    need = 8 * 32 * 32
    mem = Batches(table, pre, batch_size=4, cache="auto", budget=C.MemoryBudget(need))
    assert mem.cache.kind == "memory"
    disk = Batches(table, pre, batch_size=4, cache="auto", budget=C.MemoryBudget(need - 1),
                   cache_dir=str(tmp_path / "c"))
    assert disk.cache.kind == "disk"
    monkeypatch.setattr(C.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with caplog.at_level(logging.WARNING):
        off = Batches(table, pre, batch_size=4, cache="auto", budget=C.MemoryBudget(0),
                      cache_dir=str(tmp_path / "c2"))
    assert off.cache is None and "not caching" in caplog.text and "data.cache_dir" in caplog.text
    with pytest.raises(ConfigError, match=r"needs 8\.0 KB .* free.*data.cache_dir"):
        Batches(table, pre, batch_size=4, cache="disk", cache_dir=str(tmp_path / "c3"))


def test_memory_budget_auto_is_shared_by_local_ranks(monkeypatch):
    monkeypatch.setattr(C, "_available_memory", lambda: 8 << 30)
    assert C.memory_budget("auto") == 4 << 30
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert C.memory_budget("auto") == 1 << 30
    assert C.memory_budget(0.5) == 1 << 29


def test_workers_auto(monkeypatch):
    arr = ArrayTable(np.zeros((4, 8, 8), np.uint8), np.zeros(4, int))
    files = FileTable(["a.png"], np.zeros(1, int))
    assert C.resolve_workers("auto", arr) == 0
    assert 1 <= C.resolve_workers("auto", files) <= 8
    assert C.resolve_workers(3, files) == 3


def test_jpeg_draft_decodes_at_reduced_scale_not_below_target(tmp_path):
    a = (np.add.outer(np.arange(900), np.arange(1000)) % 256).astype(np.uint8)
    p = tmp_path / "big.jpg"
    Image.fromarray(a).save(p, quality=95)
    full, small = read_image(p), read_image(p, draft=200)
    assert full.shape == (900, 1000) and small.shape == (225, 250)  # 1/4: 1/8 would go below 200 on a side
    assert read_image(p, draft=240).shape == (450, 500)  # 1/2: 1/4 would go below 240
    assert read_image(p, draft=500).shape == (900, 1000)  # not >= 2x the target: decoded in full
    pre = _pre(size=200, in_chans=1)
    assert float((pre(small) - pre(full)).abs().mean()) < 0.01  # the same picture at model size
    png = tmp_path / "big.png"
    Image.fromarray(a).save(png)
    assert decode_image(png.read_bytes(), draft=200).shape == (900, 1000)  # only JPEGs have a draft mode


def test_hdf5_cache_reads_runs_of_rows_and_matches_row_by_row(tmp_path):
    import h5py

    from medcls.data.table import H5Table

    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.random.default_rng(0).integers(0, 255, (200, 40, 40, 3), dtype=np.uint8),
                         chunks=(64, 40, 40, 3))
    table = H5Table(p, "x", np.r_[150:200, 3:40, 120], np.arange(88) % 2)
    idx = [0, 1, 2, 49, 50, 51, 87, 5]
    assert all(np.array_equal(a, table.load(i)) for a, i in zip(table.load_many(idx), idx, strict=True))
    pre = _pre(size=24)
    ref = torch.stack([pre(table.load(i)) for i in range(len(table))])
    for kw in ({"cache": "disk", "cache_dir": str(tmp_path / "c"), "num_workers": 2}, {"cache": "off", "num_workers": 2}):
        assert torch.equal(_all(Batches(table, pre, batch_size=16, **kw)), ref), kw


def test_splits_and_folds_of_one_source_share_one_disk_file(tmp_path):
    """The disk cache is keyed by the source table a split was cut from: a second cut only fills its new rows."""
    source = _files(tmp_path / "img", n=20)
    pre, d = _pre(), str(tmp_path / "c")
    fold_a, fold_b = source.subset(np.arange(0, 12)), source.subset(np.arange(8, 20))
    a = Batches(fold_a, pre, batch_size=4, cache="disk", cache_dir=d)
    b = Batches(fold_b, pre, batch_size=4, cache="disk", cache_dir=d)
    again = Batches(source.subset(np.arange(3, 10)), pre, batch_size=4, cache="disk", cache_dir=d)
    assert a.cache.path == b.cache.path == again.cache.path and len(list((tmp_path / "c").glob("*.done.npy"))) == 1
    assert a.cache.built and b.cache.built and not again.cache.built  # b wrote rows 12-19 only
    assert int(np.load(b.cache.path.with_suffix(".done.npy")).sum()) == 20
    for batches, rows in ((a, np.arange(12)), (b, np.arange(8, 20))):
        ref = torch.stack([pre(source.load(i, draft=pre.draft)) for i in rows])
        assert torch.equal(_all(batches), ref)


def test_a_build_killed_midway_is_rebuilt_not_trusted(tmp_path):
    table = _files(tmp_path / "img", n=8)
    pre, d = _pre(), tmp_path / "c"
    first = Batches(table, pre, batch_size=4, cache="disk", cache_dir=str(d))
    first.cache.path.with_suffix(".done.npy").unlink()  # as if killed before the rows were recorded
    with open(first.cache.path, "r+b") as f:  # and the rows half written
        f.seek(200)
        f.write(b"\xff" * 500)
    again = Batches(table, pre, batch_size=4, cache="disk", cache_dir=str(d))
    assert again.cache.built
    assert torch.equal(_all(again), torch.stack([pre(table.load(i, draft=pre.draft)) for i in range(8)]))
