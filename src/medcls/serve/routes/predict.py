"""``POST /v1/predict`` and ``/v1/predict/batch``: calibrated probabilities and the decision, as ``Predictor``."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile

from ...errors import DataError
from ...inference import Predictor
from ...inference.schemas import Prediction
from ..deps import check_key, ready_predictor
from ..schemas import BatchResult, error_responses
from ..uploads import parse_batch_metadata, parse_metadata, read_upload

router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[Depends(check_key)])
Ready = Annotated[Predictor, Depends(ready_predictor)]


async def predict_upload(request: Request, pred: Predictor, file: UploadFile,
                         metadata: dict[str, Any] | None = None) -> Prediction:
    """One upload -> :class:`Prediction` (micro-batched for image-only models)."""
    t0 = time.perf_counter()
    side_inputs, used = None, None
    if metadata is not None:  # checked before the image is decoded: unknown keys -> 422 listing them
        try:
            side_inputs, used = pred.encode_inputs(1, [metadata])
        except DataError as e:
            raise HTTPException(422, str(e)) from None
    state = request.app.state
    x = await read_upload(file, state.settings, state.decode_budget, then=pred.preprocess,
                          draft=pred.preprocess.draft)
    if side_inputs:  # fused models carry no out-of-distribution gate
        p, score = (await asyncio.to_thread(pred.probabilities, x[None], side_inputs))[0], None
    else:
        p, score = await state.batcher.submit(x)
    result = pred.result(p, used=used[0] if used else None, ood_score=score)
    refused = pred.refusal(result.ood)
    state.model_metrics.observe(result, refused=refused is not None)
    if refused is not None:
        raise HTTPException(422, refused)
    result.latency_ms = (time.perf_counter() - t0) * 1000
    return result


@router.post("/predict", response_model=Prediction, response_model_exclude_none=True,
             responses=error_responses(400, 401, 408, 413, 415, 422, 503))
async def predict(request: Request, pred: Ready,
                  file: Annotated[UploadFile, File(description="PNG, JPEG, 16-bit PNG, TIFF, BMP or DICOM")],
                  metadata: Annotated[str | None, Form(description="Fused models: JSON object of clinical metadata "
                                                       "and text, keys as GET /v1/model lists")] = None) -> Prediction:
    return await predict_upload(request, pred, file, parse_metadata(metadata))


@router.post("/predict/batch", response_model=BatchResult, response_model_exclude_none=True,
             responses=error_responses(400, 401, 408, 413, 422, 503))
async def predict_batch(request: Request, pred: Ready, files: Annotated[list[UploadFile], File()],
                        metadata: Annotated[str | None, Form(description="Fused models: JSON array with one object "
                                                             "(or null) per file, in file order")] = None
                        ) -> BatchResult:
    limit = request.app.state.settings.max_files
    if len(files) > limit:
        raise HTTPException(413, f"{len(files)} files; at most {limit} per request")
    metas = parse_batch_metadata(metadata, len(files))

    async def one(f: UploadFile, meta: dict[str, Any] | None) -> dict[str, Any]:
        try:
            res = await predict_upload(request, pred, f, meta)
            res.file = f.filename
            return res.model_dump(exclude_none=True)
        except HTTPException as e:
            return {"file": f.filename, "error": {"status": e.status_code, "message": str(e.detail)}}

    return BatchResult(results=list(await asyncio.gather(*(one(f, m) for f, m in zip(files, metas, strict=True)))))
