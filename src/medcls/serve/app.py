"""FastAPI app factory: ``create_app(settings, predictor=None)``; the model loads in the lifespan hook.

Routes: ``POST /v1/predict`` (fused models: also a ``metadata`` JSON form field), ``POST /v1/predict/batch``, ``POST /v1/explain``,
``GET /v1/model``, ``GET /health``, ``GET /ready``, ``GET /metrics``, ``GET /``
(web page), ``/docs``. Bad input always gets a 4xx JSON error; image bytes and
DICOM tags never reach the logs.
"""


import asyncio
import io
import logging
import os
import secrets
import time
from contextlib import asynccontextmanager
from importlib import resources
from types import SimpleNamespace
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .. import __version__
from ..errors import DataError, MedclsError
from ..inference.predictor import Predictor
from .batching import MicroBatcher
from .settings import ServeSettings

log = logging.getLogger("medcls.serve")

SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
              (b"BM", "bmp"))


def sniff(data: bytes) -> str | None:
    """The format by content (never by file name): png, jpeg, tiff, bmp, dicom, or None."""
    from ..data.dicom import is_dicom

    if is_dicom(data):
        return "dicom"
    return next((kind for sig, kind in SIGNATURES if data.startswith(sig)), None)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def create_app(settings: ServeSettings, predictor: Predictor | None = None) -> FastAPI:
    state = SimpleNamespace(predictor=predictor, batcher=None, explainer=None)
    reg = CollectorRegistry()
    requests_total = Counter("medcls_requests_total", "HTTP requests", ["route", "status"], registry=reg)
    latency = Histogram("medcls_request_latency_seconds", "Request latency", ["route"], registry=reg)
    batch_size = Histogram("medcls_batch_size", "Images per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
                           registry=reg)
    queue_depth = Gauge("medcls_queue_depth", "Images waiting for the model", registry=reg)
    api_key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    if settings.api_key_env and not api_key:
        raise MedclsError(f"--api-key-env {settings.api_key_env}: that environment variable is not set")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.predictor is None:
            state.predictor = Predictor.load(settings.bundle, backend=settings.backend, threads=settings.threads)
        state.batcher = MicroBatcher(state.predictor.probabilities, max_batch=settings.max_batch,
                                     max_wait_ms=settings.max_wait_ms, on_batch=batch_size.observe,
                                     on_depth=queue_depth.set)
        state.batcher.start()
        yield
        await state.batcher.stop()

    app = FastAPI(title="medcls", version=__version__, lifespan=lifespan,
                  description="Medical image classification service (research use only).")

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        route = request.url.path
        try:
            response = await call_next(request)
        except Exception:
            log.exception("unhandled error on %s", route)
            response = _error(500, "internal_error", "internal error; see the server log")
        dt = time.perf_counter() - t0
        requests_total.labels(route, str(response.status_code)).inc()
        latency.labels(route).observe(dt)
        log.info("%s %s %d %.1fms", request.method, route, response.status_code, dt * 1000)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        code = {400: "bad_request", 401: "unauthorized", 413: "too_large", 415: "unsupported_format",
                422: "invalid_input", 503: "not_ready"}.get(exc.status_code, "error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(422, "invalid_request", msgs)

    @app.exception_handler(MedclsError)
    async def medcls_error(request: Request, exc: MedclsError):
        return _error(422, "invalid_input", str(exc))

    async def check_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if api_key is not None and (x_api_key is None or not secrets.compare_digest(x_api_key, api_key)):
            raise HTTPException(401, "missing or wrong API key (send it in the X-API-Key header)")

    def ready_predictor() -> Predictor:
        if state.predictor is None or state.batcher is None:
            raise HTTPException(503, "model not loaded yet")
        return state.predictor

    async def read_image(file: UploadFile) -> np.ndarray:
        from PIL import Image

        from ..data.images import decode_image

        data = await file.read(settings.max_upload_bytes + 1)
        name = "upload"
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {settings.max_upload_bytes} bytes")
        if not data:
            raise HTTPException(400, "empty file: expected a PNG, JPEG, TIFF, BMP or DICOM image")
        kind = sniff(data)
        if kind is None:
            raise HTTPException(415, "unsupported or unrecognised format (checked by content, not name): "
                                "expected PNG, JPEG, TIFF, BMP or DICOM")
        if kind != "dicom":
            try:
                with Image.open(io.BytesIO(data)) as im:
                    w, h = im.size
            except Image.DecompressionBombError as e:
                raise HTTPException(413, f"image refused as a decompression bomb: {e} (limit {settings.max_pixels} pixels)") from None
            except Exception:
                raise HTTPException(422, f"cannot read the {kind.upper()} header: the file is corrupt or truncated") from None
            if w * h > settings.max_pixels:
                raise HTTPException(413, f"image is {w}x{h} = {w * h} pixels, more than the limit of {settings.max_pixels}")
        try:
            img = await asyncio.to_thread(decode_image, data, name)
        except DataError as e:
            raise HTTPException(422, str(e)) from None
        if img.size > settings.max_pixels * 3:
            raise HTTPException(413, f"image has more than {settings.max_pixels} pixels")
        return img

    def _json_field(raw: str, example: str) -> Any:
        import json

        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise HTTPException(422, f"metadata must be {example}: {e}") from None

    def parse_metadata(pred: Predictor, raw: str | None) -> dict[str, Any] | None:
        """The ``metadata`` form field: a JSON object of the model's expected keys (and its text column)."""
        if raw is None or not raw.strip():
            return None
        meta = _json_field(raw, 'a JSON object such as {"age": 42}')
        if not isinstance(meta, dict):
            raise HTTPException(422, f"metadata must be a JSON object, got {type(meta).__name__}")
        return meta

    def batch_metadata(raw: str | None, n: int) -> list[dict[str, Any] | None]:
        """The batch ``metadata`` field: a JSON array of ``n`` objects or nulls (null = no metadata for that file)."""
        if raw is None or not raw.strip():
            return [None] * n
        metas = _json_field(raw, 'a JSON array with one object (or null) per file, such as [{"age": 42}, null]')
        if not isinstance(metas, list) or len(metas) != n:
            got = f"an array of {len(metas)}" if isinstance(metas, list) else type(metas).__name__
            raise HTTPException(422, f"metadata must be a JSON array of {n} object(s) or null(s), one per file in "
                                f"order; got {got}")
        for i, m in enumerate(metas):
            if m is not None and not isinstance(m, dict):
                raise HTTPException(422, f"metadata[{i}] must be a JSON object or null, got {type(m).__name__}")
        return metas

    def result(pred: Predictor, p: np.ndarray, t0: float, used: list[str] | None = None) -> dict[str, Any]:
        names = list(pred.spec.class_names)
        out = {"task": pred.spec.task, "probabilities": dict(zip(names, map(float, p), strict=True)),
               "predicted": pred.decide(p), "calibrated": pred.temperature != 1.0, "temperature": pred.temperature,
               "model": {"name": pred.info.get("architecture", {}).get("name"), "medcls_version": __version__,
                         "backend": pred.backend}}
        if pred.spec.task == "binary":
            out["decision"] = {"threshold": pred.threshold, "operating_point": pred.operating_point}
        elif pred.spec.task == "multilabel":  # findings: labels with p >= their own threshold; [] = no finding
            out["findings"] = out["predicted"]
            out["decision"] = {"operating_point": pred.operating_point, "thresholds": dict(pred.thresholds),
                               "findings": out["findings"], "no_finding": not out["findings"]}
        if pred.inputs is not None:  # fused model: which inputs this prediction used
            out["inputs_used"] = used or ["image"]
        out["latency_ms"] = (time.perf_counter() - t0) * 1000
        return out

    async def predict_one(pred: Predictor, file: UploadFile, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        extras, used = None, None
        if metadata is not None:  # checked before the image is decoded: unknown keys -> 422 listing them
            try:
                extras, used = pred.encode_inputs(1, [metadata])
            except DataError as e:
                raise HTTPException(422, str(e)) from None
        img = await read_image(file)
        try:
            x = pred.preprocess(img)
        except DataError as e:
            raise HTTPException(422, str(e)) from None
        if extras:
            p = (await asyncio.to_thread(pred.probabilities, x[None], extras))[0]
        else:
            p = await state.batcher.submit(x)
        return result(pred, p, t0, used[0] if used else None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if state.predictor is None or state.batcher is None:
            return _error(503, "not_ready", "model not loaded yet")
        return {"ready": True, "backend": state.predictor.backend}

    @app.get("/v1/model", dependencies=[Depends(check_key)])
    async def model_info(pred: Annotated[Predictor, Depends(ready_predictor)]) -> dict[str, Any]:
        info = {k: v for k, v in pred.info.items() if k not in ("path", "source_run")}
        return {"medcls_version": __version__, "backend": pred.backend, "task": pred.spec.task,
                "class_names": list(pred.spec.class_names), "temperature": pred.temperature,
                "threshold": pred.threshold, "operating_point": pred.operating_point,
                **({"thresholds": dict(pred.thresholds)} if pred.thresholds is not None else {}),
                "preprocess": pred.preprocess_cfg.to_dict(),
                **({"inputs": pred.expected_inputs} if pred.inputs is not None else {}), "bundle": info}

    @app.post("/v1/predict", dependencies=[Depends(check_key)])
    async def predict(file: Annotated[UploadFile, File(description="PNG, JPEG, 16-bit PNG, TIFF, BMP or DICOM")],
                      pred: Annotated[Predictor, Depends(ready_predictor)],
                      metadata: Annotated[str | None, Form(description="Fused models: JSON object of clinical "
                                                           "metadata and text, keys as GET /v1/model lists")] = None
                      ) -> dict[str, Any]:
        return await predict_one(pred, file, parse_metadata(pred, metadata))

    @app.post("/v1/predict/batch", dependencies=[Depends(check_key)])
    async def predict_batch(files: Annotated[list[UploadFile], File()],
                            pred: Annotated[Predictor, Depends(ready_predictor)],
                            metadata: Annotated[str | None, Form(description="Fused models: JSON array with one "
                                                                 "object (or null) per file, in file order")] = None
                            ) -> dict[str, Any]:
        if len(files) > settings.max_files:
            raise HTTPException(413, f"{len(files)} files; at most {settings.max_files} per request")
        metas = batch_metadata(metadata, len(files))

        async def one(f: UploadFile, meta: dict[str, Any] | None) -> dict[str, Any]:
            try:
                return {"file": f.filename, **(await predict_one(pred, f, meta))}
            except HTTPException as e:
                return {"file": f.filename, "error": {"status": e.status_code, "message": str(e.detail)}}

        return {"results": list(await asyncio.gather(*(one(f, m) for f, m in zip(files, metas, strict=True))))}

    @app.post("/v1/explain", dependencies=[Depends(check_key)])
    async def explain(file: Annotated[UploadFile, File()], pred: Annotated[Predictor, Depends(ready_predictor)],
                      method: str = "gradcam",
                      metadata: Annotated[str | None, Form(description="Fused models: the JSON object sent to "
                                                           "/v1/predict, so the map explains that prediction")] = None
                      ) -> Response:
        from .explain import explain_png

        meta = parse_metadata(pred, metadata)
        img = await read_image(file)
        if state.explainer is None:
            state.explainer = pred if pred.model is not None else Predictor.load(settings.bundle, backend="torch")
        try:
            png, cls, prob = await asyncio.to_thread(explain_png, state.explainer, img, method, meta)
        except DataError as e:
            raise HTTPException(422, str(e)) from None
        return Response(png, media_type="image/png",
                        headers={"X-Predicted-Class": cls, "X-Probability": f"{prob:.6f}", "X-Method": method})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("medcls.serve").joinpath("static/index.html").read_text()

    return app
