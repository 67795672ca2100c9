"""``POST /v1/explain``: a Grad-CAM overlay PNG of the prediction (torch weights, also for ONNX bundles)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

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
    200: {"content": {"image/png": {}}, "description": "view=overlay: the Grad-CAM map over the image; heatmap: "
          "the map alone (RGBA, transparent where cold); image: the image as the model sees it. Headers "
          "X-Predicted-Class, X-Probability, X-Method, and (maps) X-Layer, X-Map-Size (rows x columns of the "
          "map's grid) and X-Coarse-Map (1 when coarser than 7x7: it cannot localise)"},
    **error_responses(400, 401, 408, 413, 415, 422, 503)})
async def explain(request: Request, pred: Annotated[Predictor, Depends(ready_predictor)],
                  file: Annotated[UploadFile, File()], method: str = "gradcam",
                  view: Literal["overlay", "heatmap", "image"] = "overlay",
                  metadata: Annotated[str | None, Form(description="Fused models: the JSON object sent to "
                                                       "/v1/predict, so the map explains that prediction")] = None
                  ) -> Response:
    from ...explain import explain_png

    meta, state = parse_metadata(metadata), request.app.state
    explainer = _explainer(request, pred)
    ex = await read_upload(file, state.settings, state.decode_budget,
                           then=lambda img: explain_png(explainer, img, method, meta, view),
                           draft=explainer.preprocess.draft)
    # header values are latin-1: a class name that is not travels percent-encoded
    headers = {"X-Predicted-Class": quote(ex.predicted, safe=" -_.()"), "X-Probability": f"{ex.probability:.6f}",
               "X-Method": method}
    if ex.grid is not None:
        headers.update({"X-Layer": ex.layer, "X-Map-Size": f"{ex.grid[0]}x{ex.grid[1]}",
                        "X-Coarse-Map": "1" if ex.coarse else "0"})
    return Response(ex.png, media_type="image/png", headers=headers)
