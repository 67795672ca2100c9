from __future__ import annotations

import hashlib
import io
import urllib.error

import numpy as np
import pytest

from medcls.config import DataConfig
from medcls.data.sources import load_data, medmnist
from medcls.errors import DataError


def test_reads_real_file_with_official_counts(pneumonia_npz):
    d = load_data(DataConfig(source="medmnist:pneumoniamnist", options={"path": str(pneumonia_npz)}))
    assert (len(d.train), len(d.val), len(d.test)) == (4708, 524, 624)
    assert d.spec.task == "binary" and d.spec.class_names == ("normal", "pneumonia")
    assert d.spec.positive_index == 1 and d.spec.channels == 1 and d.spec.native_size == 28
    assert np.bincount(d.test.labels).tolist() == [234, 390]
    assert d.notes == []  # official splits kept


def test_lookup_order_data_dir_then_env_then_cwd(pneumonia_npz, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (b / "medmnist").mkdir(parents=True)
    (b / "medmnist" / "pneumoniamnist.npz").symlink_to(pneumonia_npz)
    monkeypatch.setenv("MEDCLS_DATA_DIR", str(b))
    monkeypatch.chdir(tmp_path)
    assert medmnist.find_npz("pneumoniamnist", 28, a) == b / "medmnist" / "pneumoniamnist.npz"
    (a / "pneumoniamnist.npz").symlink_to(pneumonia_npz)
    assert medmnist.find_npz("pneumoniamnist", 28, a) == a / "pneumoniamnist.npz"


def test_offline_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDCLS_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(medmnist.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as e:
        load_data(DataConfig(source="medmnist:breastmnist", data_dir=str(tmp_path / "dd")))
    msg = str(e.value)
    assert "breastmnist.npz" in msg and "could not be downloaded" in msg
    assert str(tmp_path / "dd" / "breastmnist.npz") in msg and "MEDCLS_DATA_DIR" in msg
    assert "zenodo.org/records/10519652/files/breastmnist.npz" in msg


def _fake_download(monkeypatch, payload: bytes):
    class Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    calls = []

    def urlopen(url, timeout=None):
        calls.append(url)
        return Resp(payload)

    monkeypatch.setattr(medmnist.urllib.request, "urlopen", urlopen)
    return calls


def test_download_checks_md5(tmp_path, monkeypatch, pneumonia_npz):
    payload = pneumonia_npz.read_bytes()
    calls = _fake_download(monkeypatch, payload)
    # the shared copy is not byte-identical to the official file: a download of it must be rejected
    with pytest.raises(DataError, match="corrupt: MD5"):
        medmnist.download_npz("pneumoniamnist", 28, tmp_path)
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob("*.part"))
    assert calls[0].startswith("https://zenodo.org/records/10519652/files/pneumoniamnist.npz")
    monkeypatch.setitem(medmnist.INFO["pneumoniamnist"]["md5"], 28, hashlib.md5(payload).hexdigest())
    out = medmnist.download_npz("pneumoniamnist", 28, tmp_path)
    assert out.read_bytes() == payload


def test_size_suffix_and_unknown_flag():
    assert medmnist.npz_name("bloodmnist", 64) == "bloodmnist_64.npz"
    with pytest.raises(DataError, match="Did you mean 'pneumoniamnist'"):
        load_data(DataConfig(source="medmnist:pneumonimnist"))
    with pytest.raises(DataError, match="size must be one of"):
        load_data(DataConfig(source="medmnist:pneumoniamnist", options={"size": 32}))


def test_npz_without_expected_keys(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="missing keys.*train_images.*it has \\['images'\\]"):
        load_data(DataConfig(source="medmnist:pneumoniamnist", options={"path": str(bad)}))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_data(DataConfig(source="medmnist:pneumoniamnist", options={"path": str(junk)}))


def test_rgb_multiclass_and_bad_labels(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for s, n in (("train", 40), ("val", 10), ("test", 10)):
        arrays[f"{s}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{s}_labels"] = (np.arange(n) % 8).reshape(n, 1).astype(np.uint8)
    p = tmp_path / "bloodmnist.npz"
    np.savez(p, **arrays)
    d = load_data(DataConfig(source="medmnist:bloodmnist", options={"path": str(p)}, min_val_size=5))
    assert d.spec.task == "multiclass" and d.spec.channels == 3 and d.spec.num_classes == 8
    arrays["test_labels"][0] = 9
    np.savez(p, **arrays)
    with pytest.raises(DataError, match="test_labels hold \\[9\\], expected 0..7"):
        load_data(DataConfig(source="medmnist:bloodmnist", options={"path": str(p)}))


def test_bad_source_strings():
    from medcls.errors import ConfigError

    with pytest.raises(ConfigError, match="kind:argument"):
        load_data(DataConfig(source="pneumoniamnist"))
    with pytest.raises(ConfigError, match="Did you mean 'medmnist'"):
        load_data(DataConfig(source="medmnst:pneumoniamnist"))
    with pytest.raises(ConfigError, match="Did you mean 'size'"):
        load_data(DataConfig(source="medmnist:pneumoniamnist", options={"sise": 28}))


def test_positive_class_override(pneumonia_npz):
    d = load_data(DataConfig(source="medmnist:pneumoniamnist", options={"path": str(pneumonia_npz)},
                             positive_class="normal"))
    assert d.spec.positive_index == 0
    with pytest.raises(DataError, match="Did you mean 'pneumonia'"):
        load_data(DataConfig(source="medmnist:pneumoniamnist", options={"path": str(pneumonia_npz)},
                             positive_class="pneumonai"))


def test_offline_without_the_file_is_one_line_that_says_where_to_put_it(tmp_path, monkeypatch, capsys):
    import urllib.error

    from medcls.cli import main

    def unreachable(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.delenv("MEDCLS_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(medmnist, "download_npz", unreachable)
    assert main(["data", "fetch", "pneumoniamnist", "--data-dir", "data"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: pneumoniamnist.npz is not on this machine")
    assert str(tmp_path / "data" / "pneumoniamnist.npz") in err[0] and "zenodo.org" in err[0] and "MD5" in err[0]
    assert "Traceback" not in err[0]
