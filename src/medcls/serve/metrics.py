"""Prometheus metrics of the service; the route label is the matched route template, never the raw path."""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .errors import error

log = logging.getLogger("medcls.serve")


class Metrics:
    """One registry per app (tests create several apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("medcls_requests_total", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("medcls_request_latency_seconds", "Request latency", ["route"], registry=self.registry)
        self.batch_size = Histogram("medcls_batch_size", "Images per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
                                    registry=self.registry)
        self.queue_depth = Gauge("medcls_queue_depth", "Images waiting for the model", registry=self.registry)


class ObserveRequests:
    """Counts, times and logs every request, the ones refused by :class:`~.limits.RequestLimits` included
    (route ``unrouted``); an unhandled error becomes a 500 in the one error shape. A raw ASGI middleware:
    Starlette's ``BaseHTTPMiddleware`` wraps ``receive`` in a task group, which turns an HTTPException raised
    while the body streams (the body deadline's 408) into an exception group, hence a 400."""

    def __init__(self, app, *, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status, started = time.perf_counter(), 500, False

        async def observed_send(message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            log.exception("unhandled error on %s", _route(scope))
            if started:  # too late for an error response: the server closes the connection
                raise
            await error(500, "internal error; see the server log", "internal_error")(scope, receive, send)
        dt, route = time.perf_counter() - t0, _route(scope)
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(dt)
        log.info("%s %s %d %.1fms", scope.get("method"), route, status, dt * 1000)


def _route(scope) -> str:
    return getattr(scope.get("route"), "path", None) or "unrouted"
