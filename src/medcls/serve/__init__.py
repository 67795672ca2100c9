"""REST service over a bundle: FastAPI app factory, micro-batching, web page."""

from ..extras import SERVE_MODULES, require_all

require_all("the REST service (medcls serve)", *SERVE_MODULES)

from .app import create_app  # noqa: E402  (after the check: a missing extra is one line, not a traceback)
from .settings import ServeSettings  # noqa: E402

__all__ = ["ServeSettings", "create_app"]
