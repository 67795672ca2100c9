"""``create_app(settings, predictor=None)``: the FastAPI service over a bundle; the model loads in the lifespan.

Routes (``serve.routes``): ``POST /v1/predict`` (fused models: also a ``metadata`` JSON form
field), ``POST /v1/predict/batch``, ``POST /v1/explain``, ``GET /v1/model``, ``/health``,
``/ready``, ``/metrics``, ``/`` (web page), ``/docs``. Every error has one shape
(``serve.errors``); image bytes and DICOM tags never reach the logs.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from .. import __version__
from ..errors import MedclsError
from ..inference import Predictor
from ..utils import url_name
from .batching import MicroBatcher
from .errors import install_error_handlers
from .limits import RequestLimits
from .metrics import Metrics, ModelMetrics, ObserveRequests, ood_buckets
from .routes import explain_router, meta_router, predict_router, v2_router
from .settings import ServeSettings
from .uploads import PixelBudget


def _api_key(settings: ServeSettings) -> str | None:
    """The key from the environment variable or the file named in the settings (never from a flag's value)."""
    if settings.api_key_env and settings.api_key_file:
        raise MedclsError("give --api-key-env or --api-key-file, not both")
    if settings.api_key_file:
        path = Path(settings.api_key_file)
        if not path.is_file():
            raise MedclsError(f"--api-key-file {path}: expected a file holding the key, "
                              f"{'found a directory' if path.is_dir() else 'no such file'}")
        key = path.read_text(errors="replace").strip()
        if not key:
            raise MedclsError(f"--api-key-file {path}: the file is empty")
        return key
    key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    if settings.api_key_env and not key:
        raise MedclsError(f"--api-key-env {settings.api_key_env}: that environment variable is not set")
    return key


def model_metrics(app: FastAPI, pred: Predictor) -> ModelMetrics:
    """The drift metrics of the loaded model, its OOD buckets from the bundle's validation reference."""
    from ..artefact import open_artefact

    ref = open_artefact(app.state.settings.bundle).drift if pred.ood is not None else None
    buckets = ood_buckets(None if ref is None else ref.scores, pred.ood.threshold if pred.ood else None)
    return ModelMetrics(app.state.metrics.registry, app.state.model_name, buckets)


@asynccontextmanager
async def lifespan(app: FastAPI):
    s, m = app.state.settings, app.state.metrics
    if app.state.predictor is None:
        app.state.predictor = Predictor.load(s.bundle, backend=s.backend, threads=s.threads, refuse_ood=s.refuse_ood)
    if app.state.model_metrics is None:  # once per app: a TestClient may start its lifespan again
        app.state.model_metrics = model_metrics(app, app.state.predictor)
    app.state.batcher = MicroBatcher(app.state.predictor.scored, max_batch=s.max_batch,
                                     max_wait_ms=s.max_wait_ms, on_batch=m.batch_size.observe, on_depth=m.queue_depth.set)
    app.state.batcher.start()
    yield
    await app.state.batcher.stop()


def create_app(settings: ServeSettings, predictor: Predictor | None = None) -> FastAPI:
    app = FastAPI(title="medcls", version=__version__, lifespan=lifespan,
                  description="Medical image classification service (research use only).")
    app.state.settings, app.state.api_key, app.state.metrics = settings, _api_key(settings), Metrics()
    app.state.model_name = settings.model_name or url_name(settings.bundle)
    app.state.predictor, app.state.batcher, app.state.explainer = predictor, None, None
    app.state.model_metrics = None
    app.state.draining = False  # set by serve.shutdown.DrainingServer on SIGTERM
    app.state.decode_budget = PixelBudget(settings.decode_pixels)
    install_error_handlers(app)
    app.add_middleware(RequestLimits, settings=settings, api_key=app.state.api_key)  # before any body is read
    app.add_middleware(ObserveRequests, metrics=app.state.metrics)  # outermost: refusals are counted too
    for router in (predict_router, explain_router, meta_router, v2_router):
        app.include_router(router)
    return app
