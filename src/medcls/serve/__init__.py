"""REST service over a bundle: FastAPI app factory, micro-batching, web page."""

from .app import create_app
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
