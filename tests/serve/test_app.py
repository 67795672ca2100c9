"""REST API on a small real bundle: every route and every error path (TestClient, no network)."""

from __future__ import annotations

import io
import logging
import zlib

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")  # the 'serve' extra
from fastapi.testclient import TestClient
from PIL import Image

from medcls.serve import ServeSettings, create_app

from .images import dicom_bytes


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(w: int = 20_000, h: int = 20_000) -> bytes:
    """A valid 1-bit PNG header claiming w x h pixels with a tiny compressed body."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\x00" * (1 + w // 8) * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def client(bundle, monkeypatch_module):
    out, _ = bundle
    monkeypatch_module.setenv("MEDCLS_TEST_KEY", "s3cret")
    app = create_app(ServeSettings(bundle=str(out), backend="onnx", api_key_env="MEDCLS_TEST_KEY",
                                   max_upload_bytes=2_000_000, max_pixels=4_000_000, max_wait_ms=2))
    with TestClient(app) as c:
        c.headers["X-API-Key"] = "s3cret"
        yield c


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_health_ready_model_docs_page(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["ready"] is True
    m = client.get("/v1/model").json()
    assert m["class_names"] == ["normal", "pneumonia"] and m["operating_point"] == "youden"
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and "/v1/predict" in page.text


def test_predict_matches_evaluation(client, evaluated_run, pneumonia_arrays):
    df = pd.read_csv(evaluated_run.path / "eval-test" / "predictions.csv")
    i = int(df["id"][0].split("/")[1])
    r = client.post("/v1/predict", files={"file": ("x.png", png_bytes(pneumonia_arrays["test_images"][i]), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert abs(body["probabilities"]["pneumonia"] - df["prob_pneumonia"][0]) < 1e-4
    assert body["predicted"] == df["decision"][0]
    assert body["decision"]["operating_point"] == "youden" and body["calibrated"] in (True, False)
    assert body["latency_ms"] > 0 and body["model"]["backend"] == "onnx"


def test_formats_jpeg_16bit_dicom(client, pneumonia_arrays):
    img = pneumonia_arrays["test_images"][3]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    assert client.post("/v1/predict", files={"file": ("a.jpg", buf.getvalue())}).status_code == 200
    img16 = (img.astype(np.uint16) * 257)
    assert client.post("/v1/predict", files={"file": ("a.png", png_bytes(img16))}).status_code == 200
    # MONOCHROME1 DICOM of the inverted image predicts like the original
    inv = 4095 - (img.astype(np.uint16) * 16)
    r = client.post("/v1/predict", files={"file": ("a.dcm", dicom_bytes(inv))})
    assert r.status_code == 200, r.text
    plain = client.post("/v1/predict", files={"file": ("a.png", png_bytes(img))}).json()
    assert abs(r.json()["probabilities"]["pneumonia"] - plain["probabilities"]["pneumonia"]) < 0.05


def test_batch_and_explain(client, pneumonia_arrays):
    files = [("files", (f"{i}.png", png_bytes(pneumonia_arrays["test_images"][i]))) for i in range(3)]
    files.append(("files", ("bad.png", b"not an image")))
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 200
    res = r.json()["results"]
    assert [("error" in x) for x in res] == [False, False, False, True]
    assert res[3]["error"]["status"] == 415
    e = client.post("/v1/explain", files={"file": ("x.png", png_bytes(pneumonia_arrays["test_images"][0]))})
    assert e.status_code == 200 and e.headers["content-type"] == "image/png"
    assert e.headers["x-predicted-class"] in ("normal", "pneumonia")
    assert Image.open(io.BytesIO(e.content)).size[0] >= 224


@pytest.mark.parametrize("name,data,status,text", [
    ("empty.png", b"", 400, "empty upload"),
    ("notes.png", b"this is a text file renamed to png", 415, "checked by content"),
    ("bomb.png", None, 413, "pixels"),
    ("trunc.jpg", None, 422, "corrupt or truncated"),
])
def test_bad_uploads_get_clear_4xx(client, pneumonia_arrays, name, data, status, text):
    if name == "bomb.png":
        data = png_bomb()
    if name == "trunc.jpg":
        buf = io.BytesIO()
        Image.fromarray(pneumonia_arrays["test_images"][0]).resize((256, 256)).save(buf, format="JPEG")
        data = buf.getvalue()[:300]
    r = client.post("/v1/predict", files={"file": (name, data)})
    assert r.status_code == status, r.text
    assert text in r.json()["error"]["message"]


def test_oversized_upload_and_missing_file(client):
    r = client.post("/v1/predict", files={"file": ("big.png", b"\x89PNG\r\n\x1a\n" + b"0" * 2_100_000)})
    assert r.status_code == 413
    r = client.post("/v1/predict")
    assert r.status_code == 422 and "file" in r.json()["error"]["message"]


def test_api_key_required_and_never_logged(client, caplog):
    caplog.set_level(logging.INFO)
    r = client.post("/v1/predict", files={"file": ("x.png", b"x")}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401
    r = client.get("/v1/model", headers={"X-API-Key": ""})
    assert r.status_code == 401
    assert client.get("/health").status_code == 200  # not behind the key
    assert "s3cret" not in caplog.text and "wrong" not in caplog.text


def test_phi_and_bytes_never_logged(client, caplog, pneumonia_arrays):
    caplog.set_level(logging.DEBUG)
    client.post("/v1/predict", files={"file": ("a.dcm", dicom_bytes(pneumonia_arrays["test_images"][0].astype(np.uint16)))})
    assert "Doe^Jane" not in caplog.text and "SECRET-ID-123" not in caplog.text


def test_metrics_exposed(client):
    text = client.get("/metrics").text
    assert "medcls_requests_total" in text and "medcls_request_latency_seconds_bucket" in text
    assert "medcls_batch_size_bucket" in text and "medcls_queue_depth" in text
    assert 'status="415"' in text


def test_explain_views_and_map_headers(client, pneumonia_arrays):
    """The page lays the heatmap (RGBA, transparent where cold) over the image the model saw; the headers
    say which layer and how coarse the map is."""
    data = png_bytes(pneumonia_arrays["test_images"][0])
    heat = client.post("/v1/explain?view=heatmap", files={"file": ("x.png", data)})
    assert heat.status_code == 200 and heat.headers["x-map-size"] == "7x7" and heat.headers["x-coarse-map"] == "0"
    assert heat.headers["x-layer"].startswith("net.layer")
    with Image.open(io.BytesIO(heat.content)) as im:
        assert im.mode == "RGBA" and im.size[0] >= 224
        alpha = np.asarray(im)[..., 3]
        assert alpha.min() < 64 < alpha.max()  # cold regions see-through, hot ones opaque
    image = client.post("/v1/explain?view=image", files={"file": ("x.png", data)})
    assert image.status_code == 200 and "x-map-size" not in image.headers
    with Image.open(io.BytesIO(image.content)) as im:
        assert im.mode == "RGB" and im.size == (224, 224)
    bad = client.post("/v1/explain?view=poster", files={"file": ("x.png", data)})
    assert bad.status_code == 422 and "view" in bad.json()["error"]["message"]
