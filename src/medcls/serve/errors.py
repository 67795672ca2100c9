"""The one error shape, ``{"error": {"code", "message"}}``, for every status, Starlette's own included."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import MedclsError

CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 408: "timeout",
         413: "too_large", 415: "unsupported_format", 422: "invalid_input", 503: "not_ready"}


def error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"code": code or CODES.get(status, "error"), "message": message}})


def busy(message: str) -> HTTPException:
    """A 503 with Retry-After and the code ``busy``: load shed by a limit; the client may retry shortly."""
    exc = HTTPException(503, f"{message}; retry shortly", headers={"retry-after": "1"})
    exc.error_code = "busy"  # read by _http_error: not the "not_ready" of a 503 before the model loads
    return exc


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail), getattr(exc, "error_code", None), getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return error(422, msgs, "invalid_request")


async def _medcls_error(request: Request, exc: MedclsError) -> JSONResponse:
    return error(422, str(exc), "invalid_input")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(MedclsError, _medcls_error)
