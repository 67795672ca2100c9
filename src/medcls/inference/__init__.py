"""Inference: :class:`Predictor` over torch or onnxruntime, one result shape for every consumer."""

from .predictor import BACKENDS, Predictor

__all__ = ["BACKENDS", "Predictor"]
