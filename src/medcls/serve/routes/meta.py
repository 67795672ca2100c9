"""``GET /health``, ``/ready``, ``/v1/model``, ``/metrics`` and the web page at ``/``."""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ... import __version__
from ...inference import Predictor
from ..deps import check_key, ready_predictor
from ..errors import error
from ..schemas import ErrorResponse, Health, ModelDescription, Ready, error_responses

router = APIRouter()
PUBLIC_BUNDLE_KEYS = ("format_version", "medcls_version", "created", "source", "calibrated", "recalibrated", "checks",
                      "notes", "training_data", "files", "onnx_inputs", "kind", "checkpoint")


@router.get("/health", response_model=Health, tags=["service"])
async def health() -> Health:
    return Health()


@router.get("/ready", response_model=Ready, tags=["service"], responses={503: {"model": ErrorResponse}})
async def ready(request: Request):
    state = request.app.state
    if state.predictor is None or state.batcher is None:
        return error(503, "model not loaded yet")
    return Ready(ready=True, backend=state.predictor.backend)


def describe(pred: Predictor) -> ModelDescription:
    post = pred.postprocess
    return ModelDescription(
        medcls_version=__version__, backend=pred.backend, architecture=pred.model_spec.architecture,
        task=pred.spec.task, class_names=list(pred.spec.class_names), calibrated=post.calibrated,
        temperature=post.temperature, operating_point=post.selected, threshold=post.threshold,
        thresholds=pred.thresholds, postprocess_fitted_on=post.fitted_on, preprocess=pred.preprocess_cfg.to_dict(),
        inputs=pred.expected_inputs or None,
        bundle={k: v for k, v in pred.info.items() if k in PUBLIC_BUNDLE_KEYS})


@router.get("/v1/model", response_model=ModelDescription, response_model_exclude_none=True, tags=["service"],
            dependencies=[Depends(check_key)], responses=error_responses(401, 503))
async def model_info(pred: Annotated[Predictor, Depends(ready_predictor)]) -> ModelDescription:
    return describe(pred)


@router.get("/metrics", tags=["service"], response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> str:
    return resources.files("medcls.serve").joinpath("static/index.html").read_text()


__all__: list[Any] = ["router"]
