"""Image headers without decoding: size, channels, format; unreadable and truncated files named."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from medcls.data.probe import probe_image
from medcls.errors import DataError


def _write(path, arr, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    path.write_bytes(buf.getvalue())
    return path


def forbid_decoding(monkeypatch) -> None:
    """Fail any pixel decode from now on: the probe must get everything from headers."""
    def load(self, *a, **kw):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(Image.Image, "load", load)
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_size_channels_format_from_headers(tmp_path, monkeypatch):
    gray = np.zeros((87, 102), np.uint8)
    cases = {
        "g.jpeg": (gray, "JPEG", 1), "rgb.jpg": (np.zeros((87, 102, 3), np.uint8), "JPEG", 3),
        "g16.png": (gray.astype(np.uint16) * 300, "PNG", 1), "rgba.png": (np.zeros((87, 102, 4), np.uint8), "PNG", 3),
        "g.tif": (gray, "TIFF", 1), "g.bmp": (gray, "BMP", 1),
    }
    for name, (arr, fmt, _) in cases.items():
        _write(tmp_path / name, arr, fmt)
    forbid_decoding(monkeypatch)
    for name, (_, fmt, ch) in cases.items():
        info = probe_image(tmp_path / name)
        assert (info.width, info.height, info.channels, info.format) == (102, 87, ch, fmt), name


def test_palette_gray_or_colour(tmp_path):
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    gray.save(tmp_path / "gray.png")
    colour = Image.fromarray(np.full((8, 8, 3), (200, 10, 10), np.uint8)).convert("P", palette=Image.ADAPTIVE)
    colour.save(tmp_path / "colour.png")
    assert probe_image(tmp_path / "gray.png").channels == 1
    assert probe_image(tmp_path / "colour.png").channels == 3


def test_unreadable_files_are_named(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)  # data well past the header
    good = _write(tmp_path / "good.jpeg", noise, "JPEG").read_bytes()
    png = _write(tmp_path / "good.png", noise, "PNG").read_bytes()
    (tmp_path / "half.jpeg").write_bytes(good[: len(good) // 2])
    (tmp_path / "half.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "junk.jpeg").write_bytes(b"this is not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "float.tif")
    expected = {"half.jpeg": "truncated JPEG: no end-of-image marker", "half.png": "truncated PNG: no IEND",
                "junk.jpeg": "not a PNG, JPEG", "empty.png": "empty file", "float.tif": "floating-point",
                "missing.png": "image not found"}
    for name, msg in expected.items():
        with pytest.raises(DataError, match=rf"{name}.*{msg}"):
            probe_image(tmp_path / name)


@pytest.mark.parametrize("trailer", [300, 5000])  # within the searched tail; beyond it (then decoded once)
def test_data_after_the_jpeg_end_marker_is_accepted(tmp_path, trailer):
    data = _write(tmp_path / "a.jpeg", np.full((32, 32), 9, np.uint8), "JPEG").read_bytes()
    (tmp_path / "a.jpeg").write_bytes(data + b"\0" * trailer)
    assert probe_image(tmp_path / "a.jpeg").channels == 1
