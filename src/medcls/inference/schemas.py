"""The result of one prediction: one pydantic shape for ``Predictor.predict``, the REST service and its OpenAPI page."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..choices import Task


class Decision(BaseModel):
    """How the probabilities became ``predicted``: the operating point and its threshold(s)."""

    model_config = ConfigDict(extra="forbid")

    operating_point: str = Field(..., description="Rule chosen on validation (default = fixed 0.5).")
    threshold: float | None = Field(None, description="Binary: p(positive) >= threshold -> positive class.")
    positive_class: str | None = Field(None, description="Binary: the class the threshold applies to.")
    provenance: str | None = Field(None, description="Binary: where the threshold came from: 'fixed' (the "
                                   "configuration's default) or 'fitted on val'; after a recalibration on external "
                                   "data, followed by ', moved by <method> recalibration on <source>'.")
    thresholds: dict[str, float] | None = Field(None, description="Multilabel: one threshold per label.")
    findings: list[str] | None = Field(None, description="Multilabel: labels at or above their threshold.")
    no_finding: bool | None = Field(None, description="Multilabel: no label reached its threshold.")


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(..., description="timm architecture.")
    backend: Literal["torch", "onnx", "int8"]
    medcls_version: str


class OodResult(BaseModel):
    """Whether the image looks like the model's training data (Mahalanobis distance of its features)."""

    available: bool = Field(..., description="False when the model carries no out-of-distribution gate (a run "
                            "directory, a fused model, a bundle exported before medcls had one).")
    score: float | None = Field(None, description="Distance to the nearest class of the training data.")
    threshold: float | None = Field(None, description="Scores above it are flagged (95% of validation images pass).")
    flagged: bool | None = Field(None, description="True: the image is unlike the training data; treat the "
                                 "prediction as unreliable.")


class Prediction(BaseModel):
    """Calibrated class probabilities and the decision at the operating point for one image."""

    model_config = ConfigDict(extra="forbid")

    file: str | None = Field(None, description="File name (or <bytes>, <array>) the prediction is for.")
    task: Task
    probabilities: dict[str, float] = Field(..., description="Calibrated: softmax (sigmoid) of logits / temperature.")
    predicted: str | list[str] = Field(..., description="Class at the operating point (multilabel: findings).")
    findings: list[str] | None = Field(None, description="Multilabel: the same list as predicted.")
    calibrated: bool = Field(..., description="False when no temperature was fitted on validation (T = 1).")
    temperature: float
    decision: Decision
    inputs_used: list[str] | None = Field(None, description="Fused models: the inputs this prediction used.")
    model: ModelInfo
    ood: OodResult = Field(..., description="Out-of-distribution check of the image.")
    latency_ms: float | None = Field(None, description="REST only: time spent on this request.")


class PredictionError(BaseModel):
    """A file that could not be predicted (batch requests, ``predict(..., on_error='skip')``)."""

    model_config = ConfigDict(extra="forbid")

    file: str | None
    error: dict[str, str | int] = Field(..., description="{'status'?, 'message'}")


__all__ = ["Decision", "ModelInfo", "Prediction", "PredictionError"]
