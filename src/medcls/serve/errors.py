"""The one error shape, ``{"error": {"code", "message"}}``, for every status, Starlette's own included.

The Open Inference Protocol's routes (``/v2``) answer in that protocol's shape instead, ``{"error": message}``
(plus ``"code"`` beside it): its clients read ``error`` as a string (tritonclient fails on an object)."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import MedclsError

CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 408: "timeout",
         413: "too_large", 415: "unsupported_format", 422: "invalid_input", 503: "not_ready"}


def error_body(path: str, status: int, message: str, code: str | None = None) -> dict:
    code = code or CODES.get(status, "error")
    if path == "/v2" or path.startswith("/v2/"):
        return {"error": message, "code": code}
    return {"error": {"code": code, "message": message}}


def error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
          path: str = "") -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers, content=error_body(path, status, message, code))


def busy(message: str) -> HTTPException:
    """A 503 with Retry-After and the code ``busy``: load shed by a limit; the client may retry shortly."""
    exc = HTTPException(503, f"{message}; retry shortly", headers={"retry-after": "1"})
    exc.error_code = "busy"  # read by _http_error: not the "not_ready" of a 503 before the model loads
    return exc


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail), getattr(exc, "error_code", None), getattr(exc, "headers", None),
                 request.url.path)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return error(422, msgs, "invalid_request", path=request.url.path)


async def _medcls_error(request: Request, exc: MedclsError) -> JSONResponse:
    return error(422, str(exc), "invalid_input", path=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(MedclsError, _medcls_error)
