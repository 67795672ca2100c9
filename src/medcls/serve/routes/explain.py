"""``POST /v1/explain``: a Grad-CAM overlay PNG of the prediction (torch weights, also for ONNX bundles)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response

from ...inference import Predictor
from ..deps import check_key, ready_predictor
from ..schemas import error_responses
from ..uploads import parse_metadata, read_upload

router = APIRouter(prefix="/v1", tags=["explain"], dependencies=[Depends(check_key)])


def _explainer(request: Request, pred: Predictor) -> Predictor:
    """The predictor itself when it runs torch; else the bundle's torch weights, loaded once."""
    state = request.app.state
    if state.explainer is None:
        state.explainer = pred if pred.model is not None else Predictor.load(state.settings.bundle, backend="torch")
    return state.explainer


@router.post("/explain", response_class=Response, responses={
    200: {"content": {"image/png": {}}, "description": "Image, heatmap and overlay; X-Predicted-Class, "
                                                       "X-Probability and X-Method headers"},
    **error_responses(400, 401, 408, 413, 415, 422, 503)})
async def explain(request: Request, pred: Annotated[Predictor, Depends(ready_predictor)],
                  file: Annotated[UploadFile, File()], method: str = "gradcam",
                  metadata: Annotated[str | None, Form(description="Fused models: the JSON object sent to "
                                                       "/v1/predict, so the map explains that prediction")] = None
                  ) -> Response:
    from ..overlay import explain_png

    meta, state = parse_metadata(metadata), request.app.state
    explainer = _explainer(request, pred)
    png, cls, prob = await read_upload(file, state.settings, state.decode_budget,
                                       then=lambda img: explain_png(explainer, img, method, meta))
    return Response(png, media_type="image/png",
                    headers={"X-Predicted-Class": cls, "X-Probability": f"{prob:.6f}", "X-Method": method})
