"""The Open Inference Protocol (KServe V2) routes: a real client (tritonclient, binary tensors), plain JSON
requests as in KServe's documentation, and the same answers as /v1/predict."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")  # the 'serve' extra
from fastapi.testclient import TestClient
from PIL import Image

from medcls.inference import Predictor
from medcls.serve import ServeSettings, create_app

from .live import served


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(pneumonia_arrays):
    return [png(pneumonia_arrays["test_images"][i]) for i in range(6)]


@pytest.fixture(scope="module")
def client(bundle):
    out, _ = bundle
    with TestClient(create_app(ServeSettings(bundle=str(out), backend="onnx", max_files=8, max_wait_ms=2))) as c:
        yield c


@pytest.fixture(scope="module")
def v1(client, images):
    """/v1/predict's answers for the images: (probabilities, decisions)."""
    answers = [client.post("/v1/predict", files={"file": ("a.png", b)}).json() for b in images]
    return np.array([list(a["probabilities"].values()) for a in answers]), [a["predicted"] for a in answers]


@pytest.fixture(scope="module")
def v1_probs(v1):
    return v1[0]


@pytest.fixture(scope="module")
def server(bundle):
    out, _ = bundle
    with served(out, "--backend", "onnx", "--model-name", "pneumonia") as (base, _proc):
        yield base


# ------------------------------------------------------------------ a real client
def test_tritonclient_round_trips_encoded_images_with_v1s_probabilities(server, images, v1, v1_probs):
    http = pytest.importorskip("tritonclient.http")
    c = http.InferenceServerClient(server.removeprefix("http://"))
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("pneumonia")
    meta = c.get_model_metadata("pneumonia")
    assert meta["name"] == "pneumonia" and {i["name"] for i in meta["inputs"]} == {"image", "image_bytes"}
    inp = http.InferInput("image_bytes", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=np.object_))  # binary tensor data (the client's default)
    res = c.infer("pneumonia", [inp])
    np.testing.assert_allclose(res.as_numpy("probabilities"), v1_probs, atol=1e-6)
    assert res.as_numpy("ood_score").shape == (len(images),)
    assert [p.decode() for p in res.as_numpy("predicted")] == v1[1]


def test_tritonclient_preprocessed_fp32_tensor_and_json_outputs(server, bundle, images, v1_probs):
    http = pytest.importorskip("tritonclient.http")
    pred = Predictor.load(bundle[0], backend="onnx")
    from medcls.data.images import decode_image

    x = np.stack([pred.preprocess(decode_image(b)).numpy() for b in images]).astype(np.float32)
    c = http.InferenceServerClient(server.removeprefix("http://"))
    inp = http.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)  # JSON data, JSON outputs
    res = c.infer("pneumonia", [inp], outputs=[http.InferRequestedOutput("probabilities", binary_data=False)])
    np.testing.assert_allclose(res.as_numpy("probabilities"), v1_probs, atol=1e-5)
    assert res.as_numpy("ood_score") is None  # only what was asked


def test_tritonclient_sees_errors_as_exceptions(server):
    http = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    c = http.InferenceServerClient(server.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match="serves 'pneumonia'"):
        c.get_model_metadata("pneumonai")
    inp = http.InferInput("image_bytes", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="unrecognised format"):
        c.infer("pneumonia", [inp])


# ------------------------------------------------------------------ plain JSON, as KServe's documentation sends
def test_kserve_json_request_with_base64_images(client, images, v1_probs):
    name = client.get("/v2/models/bundle").json()["name"]
    body = {"id": "42", "inputs": [{"name": "image_bytes", "shape": [len(images)], "datatype": "BYTES",
                                    "data": [base64.b64encode(b).decode() for b in images]}]}
    r = client.post(f"/v2/models/{name}/infer", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "42" and r.json()["model_name"] == name and r.json()["model_version"] == "1"
    got = np.array(out["probabilities"]["data"]).reshape(out["probabilities"]["shape"])
    np.testing.assert_allclose(got, v1_probs, atol=1e-6)
    versioned = client.post(f"/v2/models/{name}/versions/1/infer", json=body).json()
    assert versioned["outputs"] == r.json()["outputs"]


def test_health_server_and_model_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/models/bundle/ready").json() == {"name": "bundle", "ready": True}
    meta = client.get("/v2/models/bundle/versions/1").json()
    assert meta["inputs"][0]["shape"][1:] == [1, 28, 28] and meta["outputs"][0]["name"] == "probabilities"


@pytest.mark.parametrize(("path", "body", "status", "needle"), [
    ("/v2/models/other/infer", {"inputs": []}, 404, "serves 'bundle'"),
    ("/v2/models/bundle/versions/7/infer", {"inputs": []}, 404, "no version '7'"),
    ("/v2/models/bundle/infer", {"inputs": []}, 400, "non-empty \"inputs\""),
    ("/v2/models/bundle/infer", {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                             "data": [0.5] * 10}]}, 400, "do not make|does not hold"),
    ("/v2/models/bundle/infer", {"inputs": [{"name": "image", "shape": [1, 3, 28, 28], "datatype": "FP32",
                                             "data": [0.5] * 3 * 784}]}, 400, "expected FP32 of shape [N, 1, 28, 28]"),
    ("/v2/models/bundle/infer", {"inputs": [{"name": "imgae", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}]},
     400, "Did you mean 'image'"),
    ("/v2/models/bundle/infer", {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP8",
                                             "data": [0]}]}, 400, "datatype must be one of"),
    ("/v2/models/bundle/infer", {"inputs": [{"name": "image_bytes", "shape": [9], "datatype": "BYTES",
                                             "data": ["eA=="] * 9}]}, 413, "from 1 to 8 images"),
    ("/v2/models/bundle/infer", {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                             "data": ["%%%"]}]}, 400, "base64"),
])
def test_bad_requests_get_one_line_in_the_protocols_error_shape(client, path, body, status, needle):
    r = client.post(path, json=body)
    err = r.json()  # {"error": message} as the protocol says (its clients read a string), and v1's code beside it
    assert r.status_code == status and set(err) == {"error", "code"} and isinstance(err["error"], str)
    assert any(n in err["error"] for n in needle.split("|")), err


def test_malformed_bodies_are_400_not_500(client):
    for body, headers in ((b"{", {}), (b"\xff\xfe", {}), (b'{"inputs": 3}', {}),
                          (b'{"inputs":[{"name":"image","shape":[1,1,28,28],"datatype":"FP32",'
                           b'"parameters":{"binary_data_size":9999}}]}', {"Inference-Header-Content-Length": "98"}),
                          (b"{}", {"Inference-Header-Content-Length": "x"})):
        r = client.post("/v2/models/bundle/infer", content=body, headers=headers)
        assert r.status_code == 400 and isinstance(r.json()["error"], str), (body, r.text)


def test_key_and_size_limits_apply_to_v2(bundle, monkeypatch):
    out, _ = bundle
    monkeypatch.setenv("MEDCLS_TEST_KEY", "k")
    app = create_app(ServeSettings(bundle=str(out), backend="onnx", api_key_env="MEDCLS_TEST_KEY", max_files=2,
                                   max_upload_bytes=1000))
    with TestClient(app) as c:
        assert c.get("/v2/health/ready").status_code == 200  # probes stay open, as /health
        assert c.get("/v2/models/bundle").status_code == 401
        assert c.post("/v2/models/bundle/infer", json={"inputs": []}).status_code == 401
        big = json.dumps({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                      "data": ["A" * 400_000]}]})
        r = c.post("/v2/models/bundle/infer", content=big, headers={"X-API-Key": "k"})
        assert r.status_code == 413 and r.json()["code"] == "too_large" and "larger than" in r.json()["error"]
        assert httpx.codes.is_client_error(r.status_code)
