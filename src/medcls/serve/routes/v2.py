"""The Open Inference Protocol (KServe V2) beside ``/v1``: health, server and model metadata, ``infer``.

The bundle is served under one model name (``--model-name``, default: the bundle folder's name) and version
``1``. ``infer`` takes one input: ``image`` (FP32, shape ``[N, C, S, S]``: images already preprocessed as the
bundle's ``/v1/model`` describes, values in [0, 1]) or ``image_bytes`` (BYTES, shape ``[N]``: encoded PNG,
JPEG, TIFF, BMP or DICOM files, decoded and preprocessed as ``/v1/predict`` does). Outputs: ``probabilities``
(FP32 ``[N, K]``, calibrated), ``predicted`` (BYTES ``[N]``, the decision) and, with the bundle's gate,
``ood_score`` (FP32 ``[N]``). Same API key, size limits and error shape as ``/v1``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from ... import __version__
from ...artefact import findings_text
from ...errors import did_you_mean
from ...inference import Predictor
from ..deps import check_key, ready_predictor
from ..errors import error
from ..oip import HEADER, InferRequest, Tensor, encode_infer_response, parse_infer_request
from ..schemas import (
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
    v2_error_responses,
)
from ..uploads import check_image_bytes, decode_checked

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])
Ready = Annotated[Predictor, Depends(ready_predictor)]
VERSION = "1"
INPUTS = ("image", "image_bytes")


def _shape(pred: Predictor) -> list[int]:
    cfg = pred.preprocess_cfg
    return [cfg.in_chans, cfg.size, cfg.size]


def _model(request: Request, name: str, version: str | None = None) -> None:
    served = request.app.state.model_name
    if name != served:
        raise HTTPException(404, f"no model {name!r} here; this server serves {served!r}")
    if version is not None and version != VERSION:
        raise HTTPException(404, f"model {name!r} has no version {version!r}; versions: {VERSION}")


@router.get("/health/live", response_model=V2Live)
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", response_model=V2Ready, responses=v2_error_responses(503))
async def ready(request: Request):
    state = request.app.state
    return {"ready": True} if state.predictor is not None and state.batcher is not None else \
        error(503, "model not loaded yet", path="/v2")


@router.get("", response_model=V2ServerMetadata)
async def server_metadata() -> dict[str, Any]:
    return {"name": "medcls", "version": __version__, "extensions": ["binary_tensor_data"]}


def model_metadata(request: Request, pred: Predictor) -> dict[str, Any]:
    outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(pred.spec.class_names)]},
               {"name": "predicted", "datatype": "BYTES", "shape": [-1]}]
    if pred.ood is not None:
        outputs.append({"name": "ood_score", "datatype": "FP32", "shape": [-1]})
    return {"name": request.app.state.model_name, "versions": [VERSION], "platform": f"medcls_{pred.backend}",
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, *_shape(pred)]},
                       {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}],
            "outputs": outputs,
            "parameters": {"class_names": list(pred.spec.class_names), "task": pred.spec.task,
                           "calibrated": pred.postprocess.calibrated}}


KEYED = {"dependencies": [Depends(check_key)], "responses": v2_error_responses(401, 404, 503)}


@router.get("/models/{name}", response_model=V2ModelMetadata, **KEYED)
@router.get("/models/{name}/versions/{version}", response_model=V2ModelMetadata, **KEYED)
async def metadata(request: Request, name: str, pred: Ready, version: str | None = None) -> dict[str, Any]:
    _model(request, name, version)
    return model_metadata(request, pred)


@router.get("/models/{name}/ready", response_model=V2ModelReady, **KEYED)
@router.get("/models/{name}/versions/{version}/ready", response_model=V2ModelReady, **KEYED)
async def model_ready(request: Request, name: str, pred: Ready, version: str | None = None) -> dict[str, Any]:
    _model(request, name, version)
    return {"name": name, "ready": True}


async def _images(request: Request, pred: Predictor, t: Tensor) -> torch.Tensor:
    """The preprocessed batch from the one input (FP32 tensors, or encoded images decoded as /v1 does)."""
    limit = request.app.state.settings.max_files
    if not t.shape or not 1 <= t.shape[0] <= limit:
        raise HTTPException(413 if t.shape and t.shape[0] > limit else 400,
                            f"input {t.name!r}: from 1 to {limit} images per request, got shape {t.shape}")
    if t.name == "image":
        if t.datatype != "FP32" or list(t.shape[1:]) != _shape(pred):
            raise HTTPException(400, f"input 'image': expected FP32 of shape [N, {', '.join(map(str, _shape(pred)))}] "
                                f"(preprocessed, in [0, 1]), got {t.datatype} {t.shape}")
        x = np.asarray(t.data, dtype=np.float32)
        if not np.isfinite(x).all():
            raise HTTPException(400, "input 'image': values must be finite (preprocessed images in [0, 1])")
        return torch.from_numpy(x.copy())
    if t.datatype != "BYTES" or len(t.shape) != 1 or len(t.data) != t.shape[0]:
        raise HTTPException(400, f"input 'image_bytes': expected BYTES of shape [N] (one encoded image each), "
                            f"got {t.datatype} {t.shape} with {len(t.data)} elements")
    state = request.app.state

    async def one(i: int, data: bytes) -> torch.Tensor:
        pixels = check_image_bytes(data, state.settings, f"image_bytes[{i}]")
        return await decode_checked(data, pixels, f"image_bytes[{i}]", state.settings, state.decode_budget,
                                    then=pred.preprocess, draft=pred.preprocess.draft)

    return torch.stack(list(await asyncio.gather(*(one(i, d) for i, d in enumerate(t.data)))))


def _outputs(pred: Predictor, scored: list[tuple[np.ndarray, float | None]], wanted: dict | None) -> list[Tensor]:
    n = len(scored)
    probs = np.stack([p for p, _ in scored]).astype(np.float32) if n else \
        np.zeros((0, len(pred.spec.class_names)), np.float32)
    decided = [pred.decide(p) for p, _ in scored]
    out = [Tensor("probabilities", "FP32", list(probs.shape), probs),
           Tensor("predicted", "BYTES", [n], [(d if isinstance(d, str) else findings_text(d)).encode()
                                              for d in decided])]
    if pred.ood is not None:
        out.append(Tensor("ood_score", "FP32", [n], np.array([s for _, s in scored], np.float32)))
    if wanted is not None:
        unknown = [k for k in wanted if k not in {t.name for t in out}]
        if unknown:
            names = [t.name for t in out]
            raise HTTPException(400, f"no output {unknown[0]!r}; outputs: {', '.join(names)}."
                                f"{did_you_mean(str(unknown[0]), names)}")
        out = [t for t in out if t.name in wanted]
    return out


async def _infer(request: Request, name: str, version: str | None, pred: Predictor) -> Response:
    _model(request, name, version)
    if pred.inputs is not None:
        raise HTTPException(400, "this model also reads clinical metadata/text: use /v1/predict")
    s = request.app.state.settings
    req: InferRequest = parse_infer_request(await request.body(), request.headers.get(HEADER),
                                            max_elements=s.max_files * 4 * 1024 * 1024)
    if len(req.inputs) != 1 or req.inputs[0].name not in INPUTS:
        got = ", ".join(t.name for t in req.inputs)
        raise HTTPException(400, f"expected one input, 'image' (FP32, preprocessed) or 'image_bytes' (BYTES, "
                            f"encoded images), got {got}.{did_you_mean(req.inputs[0].name, list(INPUTS))}")
    x = await _images(request, pred, req.inputs[0])
    scored = list(await asyncio.gather(*(request.app.state.batcher.submit(row) for row in x)))
    results = [pred.result(p, ood_score=score) for p, score in scored]
    refusals = [pred.refusal(r.ood) for r in results]
    for r, refused in zip(results, refusals, strict=True):
        request.app.state.model_metrics.observe(r, refused=refused is not None)
    for i, refused in enumerate(refusals):
        if refused is not None:
            raise HTTPException(422, f"image {i}: {refused}")
    body, headers = encode_infer_response(name, VERSION, req, _outputs(pred, scored, req.outputs))
    return Response(body, headers=headers)


def inline_refs(schema: dict) -> dict:
    """A JSON schema with its ``$defs`` inlined: an ``openapi_extra`` body cannot point into components."""
    defs = schema.get("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)


# The body is read raw (JSON, or JSON + binary tensors); the schema documents its JSON form.
INFER = {"dependencies": [Depends(check_key)], "responses": {
    200: {"model": V2InferResponse, "content": {"application/octet-stream": {}}},
    **v2_error_responses(400, 401, 404, 408, 413, 415, 422, 503)},
    "openapi_extra": {"requestBody": {"required": True, "content": {
        "application/json": {"schema": inline_refs(V2InferRequest.model_json_schema())},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    "response_class": Response}


@router.post("/models/{name}/infer", **INFER)
async def infer(request: Request, name: str, pred: Ready) -> Response:
    return await _infer(request, name, None, pred)


@router.post("/models/{name}/versions/{version}/infer", **INFER)
async def infer_version(request: Request, name: str, version: str, pred: Ready) -> Response:
    return await _infer(request, name, version, pred)
