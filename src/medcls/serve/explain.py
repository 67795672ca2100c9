"""Grad-CAM overlay PNG for one decoded image (torch backend)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ..evaluation.gradcam import MIN_DISPLAY, check_method, compute_cam, overlay
from ..inference import Predictor


def explain_png(pred: Predictor, img: np.ndarray, method: str = "gradcam") -> tuple[bytes, str, float]:
    """(PNG bytes of the overlay, predicted class, its calibrated probability)."""
    check_method(method)
    x = pred.preprocess(img).unsqueeze(0)
    extras, _ = pred.encode_inputs(1)  # fused models: metadata/text unknown (learned "missing" embeddings)
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
