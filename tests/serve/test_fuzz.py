"""Fuzzing the service in-process: schemathesis against the app's own OpenAPI schema (every check), and
hypothesis-generated image and DICOM bytes. Any 5xx, or a response its schema does not allow, fails.

The number of examples is bounded for CI (``MEDCLS_FUZZ_EXAMPLES``, default 25 per operation); raise
it for a longer hunt: ``MEDCLS_FUZZ_EXAMPLES=2000 pytest tests/serve/test_fuzz.py``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi")  # the 'serve' extra
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medcls import Predictor
from medcls.serve import ServeSettings, create_app

from .images import dicom_bytes

EXAMPLES = int(os.environ.get("MEDCLS_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def app(bundle):
    out, _ = bundle
    s = ServeSettings(bundle=str(out), backend="onnx", max_upload_bytes=1_000_000, max_pixels=4_000_000,
                      max_wait_ms=1, max_files=4)
    return create_app(s, Predictor.load(out, backend="onnx"))


OPERATIONS = [("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"), ("GET", "/v1/model"),
              ("POST", "/v1/predict"), ("POST", "/v1/predict/batch"), ("POST", "/v1/explain"),
              ("GET", "/v2"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/v2/models/{name}"),
              ("GET", "/v2/models/{name}/ready"), ("GET", "/v2/models/{name}/versions/{version}"),
              ("GET", "/v2/models/{name}/versions/{version}/ready"), ("POST", "/v2/models/{name}/infer"),
              ("POST", "/v2/models/{name}/versions/{version}/infer")]


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_fuzzed_operations_are_all_there_are(api_schema):
    found = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize("method,path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_operation_against_its_schema(api_schema, method, path):
    """All of schemathesis' checks but ``positive_data_acceptance``: the schema can say "a file", not "a
    decodable image of at most N pixels", so schema-valid random bytes rightly get 415/422. (Driven through
    hypothesis directly: schemathesis' pytest plugin does not run under pytest 9.)"""
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    @given(case=api_schema[path][method].as_strategy())
    @FUZZ
    def fuzz(case):
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    fuzz()


@pytest.mark.parametrize("path", ["/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"])
def test_v2_infer_bodies_for_the_served_model(api_schema, path):
    """Schema-valid inference requests (random names, shapes, datatypes, data) sent to the model this server
    serves, not only to random model names (which all get 404)."""
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    @given(case=api_schema[path]["POST"].as_strategy())
    @settings(max_examples=EXAMPLES * 4, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        case.path_parameters = {**case.path_parameters, "name": "bundle", "version": "1"}
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    fuzz()


# ---------------------------------------------------------------- image and DICOM bytes
def _png(w: int, h: int, mode: str, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _png_header(w: int, h: int, depth: int, color: int, body: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))


def _mutate(data: bytes, cut: float, flips: list[tuple[float, int]]) -> bytes:
    out = bytearray(data[: max(1, int(len(data) * cut))])
    for where, value in flips:
        if out:
            out[int(where * (len(out) - 1))] = value
    return bytes(out)


images = st.one_of(
    st.builds(_png, st.integers(1, 300), st.integers(1, 300), st.sampled_from(["L", "RGB", "I;16", "1", "P"]),
              st.integers(0, 10)),
    st.builds(_png_header, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.sampled_from([1, 2, 8, 16, 3]),
              st.sampled_from([0, 2, 3, 4, 6, 1]), st.binary(max_size=2000)),
    st.binary(max_size=3000).map(lambda b: b"\xff\xd8\xff" + b),  # JPEG magic, anything after
    st.binary(max_size=3000).map(lambda b: b"II*\x00" + b),  # TIFF magic
)
mutations = st.tuples(st.floats(0.01, 1.0), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8))


@given(data=images, mutation=mutations)
@FUZZ
def test_image_bytes_never_give_a_server_error(app, data, mutation):
    body = data if mutation[0] > 0.5 and not mutation[1] else _mutate(data, *mutation)
    with TestClient(app) as c:
        r = c.post("/v1/predict", files={"file": ("x", body)})
    assert r.status_code < 500, r.text
    if r.status_code == 200:
        assert abs(sum(r.json()["probabilities"].values()) - 1) < 1e-4
    else:
        assert set(r.json()["error"]) == {"code", "message"} and "\n" not in r.json()["error"]["message"]


@st.composite
def dicoms(draw) -> bytes:
    rows, cols = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    arr = np.random.default_rng(draw(st.integers(0, 5))).integers(0, 4095, (rows, cols))
    data = dicom_bytes(arr, draw(st.sampled_from(["MONOCHROME1", "MONOCHROME2"])), deflated=draw(st.booleans()))
    # header fields an attacker controls: Rows (0028,0010) and Columns (0028,0011), as US little endian
    if draw(st.booleans()):
        for tag in (b"\x28\x00\x10\x00", b"\x28\x00\x11\x00"):
            at = data.find(tag)
            if at >= 0 and not draw(st.booleans()):
                value = struct.pack("<H", draw(st.integers(0, 65535)))
                data = data[: at + 8] + value + data[at + 10:]
    return _mutate(data, *draw(mutations)) if draw(st.booleans()) else data


@given(data=dicoms())
@FUZZ
def test_dicom_bytes_never_give_a_server_error(app, data):
    with TestClient(app) as c:
        r = c.post("/v1/predict", files={"file": ("x.dcm", data)})
    assert r.status_code < 500, r.text
    assert r.status_code == 200 or set(r.json()["error"]) == {"code", "message"}
