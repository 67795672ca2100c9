"""The service's routers: predictions, explanations, and what describes and watches the service."""

from .explain import router as explain_router
from .meta import router as meta_router
from .predict import router as predict_router

__all__ = ["explain_router", "meta_router", "predict_router"]
