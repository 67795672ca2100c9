"""One result shape: the REST body is `Predictor.predict`'s result (and the OpenAPI page says so); every error,
Starlette's 404/405 included, has the one error shape; /v1/model names no path of the training machine."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("fastapi")  # the 'serve' extra
from fastapi.testclient import TestClient
from PIL import Image

from medcls import Predictor
from medcls.serve import ServeSettings, create_app


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(bundle):
    out, _ = bundle
    pred = Predictor.load(out, backend="onnx")
    with TestClient(create_app(ServeSettings(bundle=str(out), backend="onnx", max_wait_ms=1), pred)) as c:
        yield c, pred


def test_rest_body_is_the_predictor_result(served, pneumonia_arrays):
    client, pred = served
    img = pneumonia_arrays["test_images"][5]
    body = client.post("/v1/predict", files={"file": ("x.png", _png(img))}).json()
    direct = pred.predict([img])[0]
    assert body.pop("latency_ms") > 0
    direct.pop("file")
    assert set(body) == set(direct)
    assert body["probabilities"] == pytest.approx(direct["probabilities"], abs=1e-6)
    assert {k: v for k, v in body.items() if k != "probabilities"} == \
        {k: v for k, v in direct.items() if k != "probabilities"}


def test_openapi_documents_the_real_shapes(served):
    client, _ = served
    spec = client.get("/openapi.json").json()
    ok = spec["paths"]["/v1/predict"]["post"]["responses"]
    assert ok["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Prediction")
    for status in ("413", "415", "422"):
        assert ok[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert {"Prediction", "Decision", "ModelDescription", "BatchResult", "ErrorResponse"} <= set(spec["components"]["schemas"])


@pytest.mark.parametrize("method,path,status,code", [("get", "/nope", 404, "not_found"),
                                                      ("get", "/v1/predict", 405, "method_not_allowed")])
def test_starlette_errors_have_the_one_shape(served, method, path, status, code):
    client, _ = served
    r = getattr(client, method)(path)
    assert r.status_code == status and r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_model_description_has_no_absolute_paths(served):
    client, _ = served
    m = client.get("/v1/model").json()
    assert m["architecture"] == "resnet18" and m["postprocess_fitted_on"] == "val" and m["calibrated"] in (True, False)

    def strings(x):
        if isinstance(x, dict):
            for k, v in x.items():
                yield k
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
        elif isinstance(x, str):
            yield x

    assert not [s for s in strings(m) if s.startswith("/")]


def test_metrics_label_is_the_route_template_not_the_raw_path(served):
    import re

    client, _ = served

    def unrouted(text: str) -> float:
        m = re.search(r'medcls_requests_total\{route="unrouted",status="404"\} ([0-9.]+)', text)
        return float(m.group(1)) if m else 0.0

    before = unrouted(client.get("/metrics").text)
    for i in range(5):
        client.get(f"/unknown/{'x' * 200}{i}")
    client.get("/v1/model")
    text = client.get("/metrics").text
    assert "x" * 200 not in text and unrouted(text) == before + 5
    assert 'route="/v1/model"' in text
