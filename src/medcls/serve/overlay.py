"""Grad-CAM pictures of one decoded image (torch backend): the overlay, the heatmap alone (RGBA, to lay
over the image with an opacity of the viewer's choice) or the image as the model sees it."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..explain import MIN_DISPLAY, MIN_MAP, check_method, choose_layer, compute_cam, layer_label, overlay
from ..inference.predictor import Predictor

VIEWS = ("overlay", "heatmap", "image")


@dataclass
class Explanation:
    png: bytes
    predicted: str
    probability: float
    layer: str | None = None
    grid: tuple[int, int] | None = None

    @property
    def coarse(self) -> bool:
        return self.grid is not None and min(self.grid) < MIN_MAP


def _png(rgb: np.ndarray) -> bytes:
    im = Image.fromarray(rgb)
    if max(im.size) < MIN_DISPLAY:  # small inputs upscaled, nearest: the pixels the model saw stay visible
        f = -(-MIN_DISPLAY // max(im.size))
        im = im.resize((im.width * f, im.height * f), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def heatmap_rgba(cam: np.ndarray) -> np.ndarray:
    """The jet-coloured map with its own value as opacity: cold regions stay transparent."""
    from matplotlib import colormaps

    rgba = colormaps["jet"](np.clip(cam, 0, 1))
    rgba[..., 3] = np.clip(cam, 0, 1) ** 0.7
    return (rgba * 255).astype(np.uint8)


def explain_png(pred: Predictor, img: np.ndarray, method: str = "gradcam", metadata: dict[str, Any] | None = None,
                view: str = "overlay") -> Explanation:
    """One picture (``view``) of the prediction's Grad-CAM, with the class, its calibrated probability, the
    layer and the map's grid.

    Fused models: ``metadata`` (and text) as for prediction, so the map explains that prediction; without
    it the learned "missing" embeddings stand in. Bad keys raise DataError.
    """
    check_method(method)
    extras, _ = pred.encode_inputs(1, [metadata] if metadata else None)
    x = pred.preprocess(img).unsqueeze(0)
    extras = {k: torch.as_tensor(v) for k, v in extras.items()} or None
    p = pred.probabilities(x, extras)[0]
    k = int(p.argmax())
    name, prob = str(pred.spec.class_names[k]), float(p[k])
    image01 = x[0].permute(1, 2, 0).numpy() if x.shape[1] == 3 else x[0, 0].numpy()
    if view == "image":
        gray = np.clip(image01, 0, 1)
        rgb = (np.repeat(gray[..., None], 3, -1) if gray.ndim == 2 else gray) * 255
        return Explanation(_png(rgb.astype(np.uint8)), name, prob)
    layer, grid = choose_layer(pred.model, x, None, extras)
    cam = compute_cam(pred.model, x, method=method, target_class=k, layer=layer, extras=extras)[0]
    picture = heatmap_rgba(cam) if view == "heatmap" else overlay(image01, cam)
    return Explanation(_png(picture), name, prob, layer_label(layer), grid)


__all__ = ["VIEWS", "Explanation", "explain_png", "heatmap_rgba"]
