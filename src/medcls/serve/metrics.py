"""Prometheus metrics of the service; the route label is the matched route template, never the raw path."""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
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


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def install_metrics(app: FastAPI, metrics: Metrics) -> None:
    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            log.exception("unhandled error on %s", _route(request))
            response = error(500, "internal error; see the server log", "internal_error")
        dt, route = time.perf_counter() - t0, _route(request)
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(dt)
        log.info("%s %s %d %.1fms", request.method, route, response.status_code, dt * 1000)
        return response
