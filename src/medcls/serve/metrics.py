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


QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
TOP_PROBABILITY = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def ood_buckets(reference_scores, threshold: float | None) -> tuple[float, ...]:
    """Histogram buckets of the OOD score: the validation quantiles (so a shift shows as mass moving across
    them) and the gate's threshold; without a reference, multiples of the threshold."""
    import numpy as np

    if reference_scores is not None and len(reference_scores):
        edges = [*np.quantile(reference_scores, QUANTILES), *([threshold] if threshold else [])]
        edges += [2 * max(edges)]
    elif threshold:
        edges = [threshold * k for k in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)]
    else:
        return ()
    return tuple(sorted({float(f"{e:.4g}") for e in edges}))


class ModelMetrics:
    """What the model sees, labelled by model: the OOD score against validation's quantiles, flagged and
    refused inputs, the decided classes (their shares: rate of each over the sum) and the top probability."""

    def __init__(self, registry: CollectorRegistry, model: str, buckets: tuple[float, ...]) -> None:
        self.model = model
        self.ood_score = Histogram("medcls_ood_score", "Out-of-distribution score of each image (buckets: validation "
                                   "quantiles and the gate's threshold)", ["model"], buckets=buckets,
                                   registry=registry) if buckets else None
        self.flagged = Counter("medcls_ood_flagged_total", "Images the out-of-distribution gate flagged", ["model"],
                               registry=registry)
        self.refused = Counter("medcls_ood_refused_total", "Images refused as out of distribution (--refuse-ood)",
                               ["model"], registry=registry)
        self.predicted = Counter("medcls_predicted_class_total", "Decisions by class (multilabel: each finding, "
                                 "or 'no finding')", ["model", "class"], registry=registry)
        self.top = Histogram("medcls_top_probability", "Highest calibrated probability of each answered image",
                             ["model"], buckets=TOP_PROBABILITY, registry=registry)

    def observe(self, prediction, refused: bool = False) -> None:
        """One image's :class:`~medcls.inference.schemas.Prediction` (answered, or refused as OOD)."""
        ood = prediction.ood
        if ood.available and self.ood_score is not None:
            self.ood_score.labels(self.model).observe(ood.score)
            if ood.flagged:
                self.flagged.labels(self.model).inc()
        if refused:
            self.refused.labels(self.model).inc()
            return
        decided = prediction.predicted
        for c in ([decided] if isinstance(decided, str) else decided or ["no finding"]):
            self.predicted.labels(self.model, c).inc()
        self.top.labels(self.model).observe(max(prediction.probabilities.values()))


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
