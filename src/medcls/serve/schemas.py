"""Response schemas of the service; predictions use :class:`medcls.inference.schemas.Prediction`, the shape
``Predictor.predict`` returns, so the OpenAPI page documents exactly what clients get."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..inference.schemas import Prediction, PredictionError


class ErrorBody(BaseModel):
    code: str = Field(..., description="Machine-readable: bad_request, unauthorized, too_large, unsupported_format, "
                                       "invalid_input, invalid_request, not_found, method_not_allowed, not_ready ...")
    message: str = Field(..., description="One line: what was expected and what came.")


class ErrorResponse(BaseModel):
    """Every error the service returns, whatever the status."""

    error: ErrorBody


class Health(BaseModel):
    status: str = "ok"


class Ready(BaseModel):
    ready: bool
    backend: str


class BatchResult(BaseModel):
    results: list[Prediction | PredictionError] = Field(..., description="One entry per file, in request order.")


class ModelDescription(BaseModel):
    """What the loaded model is and how it decides (no paths of the training machine)."""

    model_config = ConfigDict(protected_namespaces=())

    medcls_version: str
    backend: str
    architecture: str
    task: str
    class_names: list[str]
    calibrated: bool = Field(..., description="A temperature was fitted on validation.")
    temperature: float
    operating_point: str
    threshold: float
    thresholds: dict[str, float] | None = None
    postprocess_fitted_on: str = Field(..., description="Split the temperature and thresholds were fitted on.")
    preprocess: dict[str, Any]
    inputs: dict[str, Any] | None = Field(None, description="Fused models: expected metadata keys and text.")
    bundle: dict[str, Any] = Field(..., description="Source run (name), checkpoint, checks, notes, file hashes.")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: these statuses, each with the one error shape."""
    return {code: {"model": ErrorResponse} for code in codes}


__all__ = ["BatchResult", "ErrorBody", "ErrorResponse", "Health", "ModelDescription", "Prediction",
           "PredictionError", "Ready", "error_responses"]
