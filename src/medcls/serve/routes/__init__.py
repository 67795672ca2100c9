"""The service's routers: predictions, explanations, what describes and watches the service, and the Open
Inference Protocol (v2)."""

from .explain import router as explain_router
from .meta import router as meta_router
from .predict import router as predict_router
from .v2 import router as v2_router

__all__ = ["explain_router", "meta_router", "predict_router", "v2_router"]
