"""Untrusted uploads are bounded before the expensive step: a deflated DICOM declaring a huge image is refused
from its header, without decompressing its pixel data."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("fastapi")  # the 'serve' extra
from fastapi.testclient import TestClient

from medcls import Predictor
from medcls.serve import ServeSettings, create_app

from .images import dicom_bytes


def deflated_dicom(rows: int, cols: int) -> bytes:
    return dicom_bytes(np.zeros((rows, cols), np.uint16), "MONOCHROME2", deflated=True)


@pytest.fixture(scope="module")
def small_limit(bundle):
    out, _ = bundle
    settings = ServeSettings(bundle=str(out), backend="onnx", max_pixels=1_000_000, max_wait_ms=1)
    with TestClient(create_app(settings, Predictor.load(out, backend="onnx"))) as c:
        yield c


def test_a_dicom_declaring_too_many_pixels_is_refused_from_its_header(small_limit, monkeypatch):
    import medcls.data.dicom as dicom

    data = deflated_dicom(2000, 2000)  # 8 MB of pixels in a few KB
    assert len(data) < 100_000

    def never(*a, **k):
        raise AssertionError("pixel data decoded before the header was checked")

    monkeypatch.setattr(dicom, "decode_dicom", never)
    monkeypatch.setattr(dicom, "dataset_to_array", never)
    r = small_limit.post("/v1/predict", files={"file": ("big.dcm", data)})
    assert r.status_code == 413 and "DICOM header declares 4000000 pixels" in r.json()["error"]["message"]


def test_the_header_of_a_deflated_dicom_is_read_without_inflating_its_pixels():
    """pydicom inflates a whole deflated dataset before reading any element: a 98 KB file declaring 7072x7072
    pixels cost 100 MB and 0.3 s on the event loop per request; the header check inflates 1 MiB at most."""
    import tracemalloc

    from medcls.data.dicom import declared_pixels

    data = deflated_dicom(4000, 4000)  # 32 MB of pixel data in about 30 KB
    assert len(data) < 100_000
    tracemalloc.start()
    try:
        assert declared_pixels(data, "bomb.dcm") == 16_000_000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, peak


def test_a_dicom_within_the_limit_is_predicted(small_limit):
    r = small_limit.post("/v1/predict", files={"file": ("ok.dcm", deflated_dicom(64, 64))})
    assert r.status_code == 200, r.text


def test_a_png_holding_fewer_rows_than_it_declares_gets_422(small_limit):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes([128]) * 100 for _ in range(4))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100, 5000, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    r = small_limit.post("/v1/predict", files={"file": ("t.png", png)})
    assert r.status_code == 422 and "truncated PNG" in r.json()["error"]["message"]


@pytest.mark.parametrize("metadata,status,text", [
    ("[" * 50_000 + "]" * 50_000, 413, "more than the limit"),
    ("[" * 20_000, 422, "nested at most 8 levels"),
    ("[" * 12 + "1" + "]" * 12, 422, "nested at most 8 levels"),
    ('{"age": ', 422, "metadata must be a JSON object"),
])
def test_metadata_json_is_bounded_in_size_and_nesting(small_limit, metadata, status, text):
    """Deep nesting used to exhaust the parser's recursion (a 500); now every such field is a 4xx."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buf, format="PNG")
    r = small_limit.post("/v1/predict", files={"file": ("x.png", buf.getvalue())}, data={"metadata": metadata})
    assert r.status_code == status and text in r.json()["error"]["message"], r.text
