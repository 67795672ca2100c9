"""Grad-CAM overlay PNG for one decoded image (torch backend)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..evaluation.gradcam import MIN_DISPLAY, check_method, compute_cam, overlay
from ..inference.predictor import Predictor


def explain_png(pred: Predictor, img: np.ndarray, method: str = "gradcam",
                metadata: dict[str, Any] | None = None) -> tuple[bytes, str, float]:
    """(PNG bytes of the overlay, predicted class, its calibrated probability).

    Fused models: ``metadata`` (and text) as for prediction, so the map explains the same
    prediction; without it the learned "missing" embeddings stand in. Bad keys raise DataError.
    """
    check_method(method)
    extras, _ = pred.encode_inputs(1, [metadata] if metadata else None)
    x = pred.preprocess(img).unsqueeze(0)
    extras = {k: torch.as_tensor(v) for k, v in extras.items()} or None
    p = pred.probabilities(x, extras)[0]
    k = int(p.argmax())
    cam = compute_cam(pred.model, x, method=method, target_class=k, extras=extras)[0]
    image01 = x[0].permute(1, 2, 0).numpy() if x.shape[1] == 3 else x[0, 0].numpy()
    rgb = overlay(image01, cam)
    im = Image.fromarray(rgb)
    if max(im.size) < MIN_DISPLAY:
        f = -(-MIN_DISPLAY // max(im.size))
        im = im.resize((im.width * f, im.height * f), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue(), str(pred.spec.class_names[k]), float(p[k])


__all__ = ["explain_png"]
