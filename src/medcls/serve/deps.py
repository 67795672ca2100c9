"""Request dependencies: the API key and the loaded predictor, from ``app.state`` (set by ``create_app``)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Header, HTTPException, Request

from ..inference import Predictor


async def check_key(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> None:
    expected = request.app.state.api_key
    if expected is not None and (x_api_key is None or not secrets.compare_digest(x_api_key, expected)):
        raise HTTPException(401, "missing or wrong API key (send it in the X-API-Key header)")


def ready_predictor(request: Request) -> Predictor:
    state = request.app.state
    if state.predictor is None or state.batcher is None:
        raise HTTPException(503, "model not loaded yet")
    return state.predictor
