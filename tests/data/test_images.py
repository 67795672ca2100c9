"""Image decoding: bit depth, channels and every way a file can be bad."""

from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcls.data.images import decode_image, read_image
from medcls.data.table import ArrayTable, FileTable
from medcls.errors import DataError

NPZ = Path("/work/shared/data/medmnist/pneumoniamnist.npz")


@functools.lru_cache(maxsize=1)
def _xray() -> np.ndarray:
    """One real 28x28 chest x-ray from PneumoniaMNIST, upscaled to 64x64."""
    if not NPZ.is_file():
        pytest.skip(f"{NPZ} not available")
    with np.load(NPZ) as z:
        img = z["train_images"][0]
    return np.asarray(Image.fromarray(img).resize((64, 64), Image.BILINEAR))


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_gray_png_and_jpeg():
    x = _xray()
    out = decode_image(_encode(Image.fromarray(x), "PNG"))
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    np.testing.assert_array_equal(out, x)
    out = decode_image(_encode(Image.fromarray(x), "JPEG", quality=95))
    assert out.shape == (64, 64) and np.abs(out.astype(int) - x).mean() < 3


def test_16bit_png_keeps_precision(tmp_path):
    x16 = _xray().astype(np.uint16) * 257 + 3  # uses the full 16-bit range, not a multiple of 256
    path = tmp_path / "xray16.png"
    Image.fromarray(x16).save(path)
    out = read_image(path)
    assert out.dtype == np.uint16 and out.shape == (64, 64)
    np.testing.assert_array_equal(out, x16)


def test_16bit_tiff(tmp_path):
    x16 = (_xray().astype(np.uint16) << 4) | 0x000F  # 12-bit data, as many detectors store it
    path = tmp_path / "xray16.tif"
    Image.fromarray(x16).save(path)
    out = read_image(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, x16)


def test_rgba_becomes_rgb():
    x = _xray()
    rgba = np.stack([x, 255 - x, x // 2, np.full_like(x, 128)], axis=-1)
    out = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_gray_alpha_becomes_gray():
    x = _xray()
    la = Image.fromarray(np.stack([x, np.full_like(x, 200)], axis=-1), "LA")
    out = decode_image(_encode(la, "PNG"))
    assert out.shape == (64, 64)
    np.testing.assert_array_equal(out, x)


def test_rgb_and_binary():
    x = _xray()
    rgb = np.stack([x, x, 255 - x], axis=-1)
    np.testing.assert_array_equal(decode_image(_encode(Image.fromarray(rgb), "PNG")), rgb)
    mask = Image.fromarray(x > 128).convert("1")
    out = decode_image(_encode(mask, "PNG"))
    assert out.dtype == np.uint8 and out.shape == (64, 64) and set(np.unique(out)) <= {0, 255}


def test_float_image_is_refused(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(_xray().astype(np.float32) / 255).save(path)
    with pytest.raises(DataError, match="floating-point images are not supported"):
        read_image(path)


def test_bad_files(tmp_path):
    data = _encode(Image.fromarray(_xray()), "JPEG")
    with pytest.raises(DataError, match="image not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: empty file"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "text.jpeg").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DataError, match=r"text.jpeg: cannot decode image: not a PNG, JPEG"):
        read_image(tmp_path / "text.jpeg")
    (tmp_path / "cut.jpeg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"(?i)cut.jpeg: cannot decode image.*truncated"):
        read_image(tmp_path / "cut.jpeg")
    png = _encode(Image.fromarray(_xray()), "PNG")
    with pytest.raises(DataError, match=r"cut.png: truncated PNG"):
        decode_image(png[: len(png) // 2], "cut.png")


def test_file_table_reads_on_demand(tmp_path):
    x = _xray()
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.roll(x, i, axis=1)).save(paths[-1])
    table = FileTable(paths, np.array([0, 1, 0, 1]), groups=np.array(["a", "a", "b", "b"], dtype=object))
    np.testing.assert_array_equal(table.load(2), np.roll(x, 2, axis=1))
    sub = pickle.loads(pickle.dumps(table.subset([3, 1])))
    assert list(sub.labels) == [1, 1] and list(sub.groups) == ["b", "a"]
    np.testing.assert_array_equal(sub.load(0), np.roll(x, 3, axis=1))
    with pytest.raises(DataError, match="got 4 paths but 3 labels"):
        FileTable(paths, np.array([0, 1, 0]))
    with pytest.raises(DataError, match="got 2 group ids for 4 labels"):
        FileTable(paths, np.zeros(4), groups=np.array(["a", "b"]))


def test_array_table():
    imgs = np.zeros((5, 8, 8), dtype=np.uint8)
    table = ArrayTable(imgs, np.arange(5))
    assert table.ids[0] == "#0" and len(table.subset([1, 2])) == 2
    with pytest.raises(DataError, match="got 5 images but 4 labels"):
        ArrayTable(imgs, np.arange(4))


def test_decode_errors_name_the_file_not_the_stream(tmp_path):
    import pytest

    from medcls.errors import DataError

    f = tmp_path / "notes.png"
    f.write_text("this is a text file renamed to png")
    with pytest.raises(DataError) as e:
        read_image(f)
    assert str(f) in str(e.value) and "object at 0x" not in str(e.value) and "not a PNG" in str(e.value)
    with pytest.raises(DataError) as e:
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "upload.png")
    assert "upload.png" in str(e.value) and "object at 0x" not in str(e.value)


def _png_with_rows(width: int, declared: int, present: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes([128]) * width for _ in range(present))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, declared, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_png_holding_fewer_rows_than_it_declares_is_refused():
    """Pillow zero-fills the rows a cleanly ended zlib stream lacks; medcls refuses the file instead."""
    import pytest

    from medcls.errors import DataError

    with pytest.raises(DataError, match=r"x.png: truncated PNG: its header declares 100x300000 pixels"):
        decode_image(_png_with_rows(100, 300_000, 4), "x.png")
    assert decode_image(_png_with_rows(100, 4, 4), "ok.png").shape == (4, 100)


@pytest.mark.parametrize("mode,dtype", [("L", np.uint8), ("RGB", np.uint8), ("I;16", np.uint16), ("P", np.uint8)])
def test_complete_pngs_pass_the_completeness_check(mode, dtype):
    from PIL import Image

    rng = np.random.default_rng(0)
    shape = (37, 53, 3) if mode == "RGB" else (37, 53)
    arr = rng.integers(0, 255 if dtype == np.uint8 else 65535, shape, endpoint=True).astype(dtype)
    img = Image.fromarray(arr) if mode != "P" else Image.fromarray(arr.astype(np.uint8)).convert("P")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert decode_image(buf.getvalue(), "x.png").shape[:2] == (37, 53)


def test_expected_bytes_of_an_interlaced_png():
    from medcls.data.png import expected_bytes

    assert expected_bytes(8, 8, 8, 0, 0) == 72  # 8 rows of 1 filter byte + 8 pixels
    assert expected_bytes(8, 8, 8, 0, 1) == 2 + 2 + 3 + 6 + 10 + 20 + 36  # the seven Adam7 passes


def test_a_png_whose_image_data_does_not_inflate_is_refused():
    """Found by the service fuzzer: a flipped byte in IDAT made zlib raise (a 500) in the completeness check."""
    buf = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    idat = data.find(b"IDAT")
    data[idat + 4: idat + 12] = b"\xff" * 8  # the zlib header and first block: not deflate any more
    with pytest.raises(DataError, match=r"x.png: corrupt PNG: its image data does not decompress"):
        decode_image(bytes(data), "x.png")


def test_a_dicom_header_with_a_corrupt_rows_element_is_refused():
    """Found by the service fuzzer: pydicom converts Rows lazily and raised NotImplementedError (a 500)."""
    from medcls.data.dicom import declared_pixels

    from ..serve.images import dicom_bytes

    data = bytearray(dicom_bytes(np.zeros((8, 8))))
    at = data.find(b"\x28\x00\x10\x00")  # (0028,0010) Rows, explicit VR "US"
    data[at + 4: at + 6] = b"\x55\x04"  # an unknown VR
    with pytest.raises(DataError, match=r"unreadable or non-numeric Rows"):
        declared_pixels(bytes(data), "x.dcm")
