"""The service carries the out-of-distribution check: ``ood`` in every prediction, 422 when told to refuse."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")  # the 'serve' extra

from fastapi.testclient import TestClient

from medcls.inference import Predictor
from medcls.serve import ServeSettings, create_app
from medcls.testing.ood_images import render

from .test_app import png_bytes


def _client(bundle_dir, refuse: bool, threshold: float | None = None) -> TestClient:
    pred = Predictor.load(bundle_dir, backend="onnx", refuse_ood=refuse)
    if threshold is not None:
        pred.ood.threshold = threshold
    return TestClient(create_app(ServeSettings(bundle=str(bundle_dir), refuse_ood=refuse, max_wait_ms=1), pred))


def test_every_prediction_has_ood(bundle, pneumonia_arrays):
    with _client(bundle[0], refuse=False) as c:
        r = c.post("/v1/predict", files={"file": ("x.png", png_bytes(pneumonia_arrays["test_images"][0]))})
        assert r.status_code == 200
        ood = r.json()["ood"]
        assert ood["available"] and isinstance(ood["flagged"], bool) and ood["threshold"] > 0
        page = png_bytes(render("text page", 1, size=64)[0])
        r = c.post("/v1/predict/batch", files=[("files", ("a.png", page)), ("files", ("b.png", page))])
        assert all("ood" in x for x in r.json()["results"])


def test_refuse_mode_answers_422_json_for_a_flagged_image(bundle, pneumonia_arrays):
    with _client(bundle[0], refuse=True, threshold=-1.0) as c:  # every image flagged
        r = c.post("/v1/predict", files={"file": ("x.png", png_bytes(pneumonia_arrays["test_images"][0]))})
        assert r.status_code == 422
        assert "out of distribution" in r.json()["error"]["message"]
    with _client(bundle[0], refuse=True) as c:  # an ordinary chest X-ray passes
        ok = [c.post("/v1/predict", files={"file": ("x.png", png_bytes(im))}).status_code
              for im in pneumonia_arrays["test_images"][:10]]
        assert ok.count(200) >= 7
