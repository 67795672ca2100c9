"""The service carries the out-of-distribution check: ``ood`` in every prediction, 422 when told to refuse."""

from __future__ import annotations

import numpy as np
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


def _metric(text: str, name: str, **labels) -> float:
    """The value of one sample of the Prometheus exposition ``text`` (parsed by prometheus-client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    want = {k: str(v) for k, v in labels.items()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in want.items()):
                return sample.value
    raise AssertionError(f"no {name}{want} in /metrics")


def test_metrics_show_what_the_model_sees(bundle, pneumonia_arrays):
    from medcls.artefact import open_artefact

    ref = open_artefact(bundle[0]).drift
    with _client(bundle[0], refuse=False) as c:
        images = pneumonia_arrays["test_images"][:12]
        answers = [c.post("/v1/predict", files={"file": ("x.png", png_bytes(im))}).json() for im in images]
        text = c.get("/metrics").text
    model = "bundle"
    assert _metric(text, "medcls_ood_score_count", model=model) == 12
    flagged = sum(a["ood"]["flagged"] for a in answers)
    assert _metric(text, "medcls_ood_flagged_total", model=model) == flagged
    for cls in {a["predicted"] for a in answers}:
        assert _metric(text, "medcls_predicted_class_total", model=model, **{"class": cls}) == \
            sum(a["predicted"] == cls for a in answers)
    assert _metric(text, "medcls_top_probability_count", model=model) == 12
    median = f"{np.quantile(ref.scores, 0.5):.4g}"  # a bucket edge at validation's median score
    assert _metric(text, "medcls_ood_score_bucket", model=model, le=float(median)) <= 12


def test_refused_images_are_counted(bundle, pneumonia_arrays):
    with _client(bundle[0], refuse=True, threshold=-1.0) as c:
        for im in pneumonia_arrays["test_images"][:3]:
            assert c.post("/v1/predict", files={"file": ("x.png", png_bytes(im))}).status_code == 422
        text = c.get("/metrics").text
    assert _metric(text, "medcls_ood_refused_total", model="bundle") == 3
    assert _metric(text, "medcls_ood_flagged_total", model="bundle") == 3
