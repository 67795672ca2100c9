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





# ------------------------------------------------------------------ the Open Inference Protocol (/v2)
class V2Error(BaseModel):
    """The protocol's error shape (its clients read ``error`` as a string), with /v1's code beside it."""

    error: str = Field(..., description="One line: what was expected and what came.")
    code: str


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    name: str
    ready: bool


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class V2RequestTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(..., description="FP32 for 'image' (preprocessed), BYTES for 'image_bytes' (encoded images; "
                          "base64 strings in JSON)")
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2RequestTensor]
    outputs: list[V2RequestOutput] | None = None


class V2ResponseTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2InferResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2ResponseTensor]


def v2_error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": V2Error} for code in codes}


__all__ = ["BatchResult", "ErrorBody", "ErrorResponse", "Health", "ModelDescription", "Prediction",
           "PredictionError", "Ready", "V2Error", "V2InferRequest", "V2InferResponse", "V2Live", "V2ModelMetadata",
           "V2ModelReady", "V2Ready", "V2ServerMetadata", "error_responses", "v2_error_responses"]
