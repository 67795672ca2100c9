"""Bounds checked before a request body is read: the API key, then the body size (declared, then streamed).

A raw ASGI middleware, because FastAPI dependencies run only after the multipart body has been
parsed (and spooled to disk): an unauthenticated or oversized upload would cost its whole size first.
The limit depends on the route (a batch carries up to max_files uploads), which FastAPI's per-route
``max_body_size`` cannot take from runtime settings; the streamed count is Starlette's own responder.
"""

from __future__ import annotations

import asyncio
import json
import secrets

from fastapi import HTTPException  # (FastAPI turns other exceptions raised while parsing a form into a 400)
from starlette.middleware.body_limit import RequestBodyLimitResponder

MULTIPART_SLACK = 64 * 1024  # headers and boundaries of the multipart form around the file(s)


DOCS = ("/docs", "/redoc", "/openapi.json")


async def _reply(send, status: int, code: str, message: str, extra: tuple = ()) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


def _deadline_receive(receive, seconds: float):
    """``receive`` that answers 408 (through the app's error handlers) when the whole body has not arrived
    ``seconds`` after the first read: a client trickling bytes cannot hold a request, a worker and its file
    descriptor open. Reads after the last body chunk (waiting for a disconnect) are not timed."""
    loop = asyncio.get_running_loop()
    deadline, done = loop.time() + seconds, False

    async def bounded():
        nonlocal done
        if done:
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
        except TimeoutError:
            raise HTTPException(408, f"request body not received within {seconds:g} s",
                                headers={"connection": "close"}) from None
        done = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return bounded


class RequestLimits:
    """Before a body is read: 401 without the right X-API-Key (on /v1/, and on /metrics and the docs when
    protected), 503 with Retry-After beyond ``max_concurrency`` requests in flight on /v1/, 413 for a declared
    body over the route's limit; a body that streams past the limit is cut there, one that takes longer than
    ``body_timeout`` gets 408."""

    def __init__(self, app, *, settings, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key
        self.single = settings.max_upload_bytes + MULTIPART_SLACK
        self.batch = (settings.max_upload_bytes + MULTIPART_SLACK) * settings.max_files
        self.max_concurrency, self.in_flight = settings.max_concurrency, 0
        self.body_timeout = settings.body_timeout
        self.protected = ("/v1/", *(("/metrics",) if settings.protect_metrics else ()),
                          *(DOCS if settings.protect_docs else ()))

    def _limit(self, path: str) -> int:
        return self.batch if path.rstrip("/").endswith("/batch") else self.single

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, headers = scope.get("path", ""), dict(scope.get("headers") or [])
        key = headers.get(b"x-api-key", b"")
        if self.api_key is not None and path.startswith(self.protected) and \
                not secrets.compare_digest(key, self.api_key.encode()):
            return await _reply(send, 401, "unauthorized", "missing or wrong API key (send it in the X-API-Key header)")
        if not path.startswith("/v1/"):
            return await self._bounded(scope, receive, send, path, headers)
        if self.in_flight >= self.max_concurrency:
            return await _reply(send, 503, "busy", f"{self.in_flight} requests in flight (limit {self.max_concurrency}); "
                                "retry shortly", ((b"retry-after", b"1"),))
        self.in_flight += 1
        try:
            await self._bounded(scope, receive, send, path, headers)
        finally:
            self.in_flight -= 1

    async def _bounded(self, scope, receive, send, path: str, headers: dict) -> None:
        limit = self._limit(path)
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _reply(send, 400, "bad_request", "Content-Length must be a non-negative integer")
            if int(declared) > limit:
                return await _reply(send, 413, "too_large", f"request body of {int(declared)} bytes is larger than "
                                    f"the limit of {limit} bytes for {path}")
        # the streamed count is Starlette's: FastAPI answers its overflow with 413 through our handlers
        receive = _deadline_receive(receive, self.body_timeout)
        return await RequestBodyLimitResponder(self.app, limit)(scope, receive, send)
