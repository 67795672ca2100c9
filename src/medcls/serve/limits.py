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

from .errors import busy, error_body

MULTIPART_SLACK = 64 * 1024  # headers and boundaries of the multipart form around the file(s)


DOCS = ("/docs", "/redoc", "/openapi.json")
ALIVE = ("/health", "/v2/health/live")  # answered while draining (serve.shutdown): liveness must not restart it
PREDICTING = ("/v1/", "/v2/models/")  # behind the key and the upload limits (/v2/health and /v2 stay open, as /health)


async def _reply(send, path: str, status: int, code: str, message: str, extra: tuple = ()) -> None:
    body = json.dumps(error_body(path, status, message, code)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


RATE_GRACE = 5.0  # seconds before the minimum body rate applies (as Kestrel's MinRequestBodyDataRate)


def _deadline_receive(receive, seconds: float, min_rate: float, on_complete=None):
    """``receive`` that answers 408 (through the app's error handlers) when the whole body has not arrived
    ``seconds`` after the request came in, or arrives slower than ``min_rate`` bytes/s on average over the time
    spent waiting for it, after a grace of ``RATE_GRACE`` s of waiting: a client trickling bytes cannot hold a request, its place and its file descriptor.
    Reads after the last body chunk (waiting for a disconnect) are not timed; ``on_complete`` runs when the
    last chunk arrives (and may raise an HTTPException too)."""
    loop = asyncio.get_running_loop()
    deadline, done, received, waited = loop.time() + seconds, False, 0, 0.0

    async def bounded():
        # the rate counts only the time spent waiting for the client, not the server's own time between reads
        # (a busy event loop or a slow first read must not be blamed on the client)
        nonlocal done, received, waited
        if done:
            return await receive()
        t0 = loop.time()
        by_rate = t0 + RATE_GRACE + received / min_rate - waited
        try:
            message = await asyncio.wait_for(receive(), max(min(deadline, by_rate) - t0, 0))
        except TimeoutError:
            waited += loop.time() - t0
            why = (f"not received within {seconds:g} s" if loop.time() >= deadline else
                   f"arriving slower than {min_rate:g} bytes/s ({received} bytes in {waited:.0f} s)")
            raise HTTPException(408, f"request body {why}", headers={"connection": "close"}) from None
        waited += loop.time() - t0
        received += len(message.get("body", b""))
        done = message["type"] != "http.request" or not message.get("more_body", False)
        if done and on_complete is not None:
            on_complete()
        return message

    return bounded


class _Slot:
    """One /v1/ request's place in the two limits: ``max_receiving`` while its body arrives (cheap, but each
    holds a connection and spools to disk), then ``max_concurrency`` once it is complete (decoding and the
    model: the expensive part). Slow uploads thus cannot take the places of requests ready to work."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits, self.stage = limits, "receiving"
        limits.receiving += 1

    def body_complete(self) -> None:
        lim = self.limits
        lim.receiving -= 1
        self.stage = None
        if lim.in_flight >= lim.max_concurrency:
            raise busy(f"{lim.in_flight} requests in flight (limit {lim.max_concurrency})")
        lim.in_flight += 1
        self.stage = "working"

    def release(self) -> None:
        if self.stage == "receiving":
            self.limits.receiving -= 1
        elif self.stage == "working":
            self.limits.in_flight -= 1
        self.stage = None


class RequestLimits:
    """Before a body is read: 401 without the right X-API-Key (on /v1/, and on /metrics and the docs when
    protected), 503 with Retry-After beyond ``max_receiving`` uploads arriving at once on /v1/, 413 for a
    declared body over the route's limit; a body that streams past the limit is cut there, one that takes
    longer than ``body_timeout`` gets 408; once complete, 503 with Retry-After beyond ``max_concurrency``
    requests in flight."""

    def __init__(self, app, *, settings, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key
        self.single = settings.max_upload_bytes + MULTIPART_SLACK
        self.batch = (settings.max_upload_bytes + MULTIPART_SLACK) * settings.max_files
        self.max_concurrency, self.in_flight = settings.max_concurrency, 0
        self.max_receiving, self.receiving = settings.max_receiving, 0
        self.body_timeout, self.min_body_rate = settings.body_timeout, settings.min_body_rate
        self.protected = (*PREDICTING, *(("/metrics",) if settings.protect_metrics else ()),
                          *(DOCS if settings.protect_docs else ()))

    def _limit(self, path: str) -> int:
        return self.batch if path.rstrip("/").endswith(("/batch", "/infer")) else self.single

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, headers = scope.get("path", ""), dict(scope.get("headers") or [])
        owner = scope.get("app")  # the Starlette app that set the flag (absent when mounted bare)
        if owner is not None and getattr(owner.state, "draining", False) and path not in ALIVE:
            return await _reply(send, path, 503, "shutting_down", "the server is shutting down; retry (another "
                                "replica will answer)", ((b"retry-after", b"1"), (b"connection", b"close")))
        key = headers.get(b"x-api-key", b"")
        if self.api_key is not None and path.startswith(self.protected) and \
                not secrets.compare_digest(key, self.api_key.encode()):
            return await _reply(send, path, 401, "unauthorized", "missing or wrong API key (send it in the X-API-Key header)")
        if not path.startswith(PREDICTING):
            return await self._bounded(scope, receive, send, path, headers)
        if self.receiving >= self.max_receiving:
            return await _reply(send, path, 503, "busy", f"{self.receiving} uploads arriving (limit {self.max_receiving}); "
                                "retry shortly", ((b"retry-after", b"1"),))
        slot = _Slot(self)
        try:
            await self._bounded(scope, receive, send, path, headers, slot.body_complete)
        finally:
            slot.release()

    async def _bounded(self, scope, receive, send, path: str, headers: dict, on_complete=None) -> None:
        limit = self._limit(path)
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _reply(send, path, 400, "bad_request", "Content-Length must be a non-negative integer")
            if int(declared) > limit:
                return await _reply(send, path, 413, "too_large", f"request body of {int(declared)} bytes is larger than "
                                    f"the limit of {limit} bytes for {path}")
        # the streamed count is Starlette's: FastAPI answers its overflow with 413 through our handlers
        receive = _deadline_receive(receive, self.body_timeout, self.min_body_rate, on_complete)
        return await RequestBodyLimitResponder(self.app, limit)(scope, receive, send)
