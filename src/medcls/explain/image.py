"""Explaining one image: its calibrated prediction and the CAM of a class, as the figure ``medcls explain`` saves
for a run (:func:`explain_image`) or as one picture of a :class:`~medcls.inference.Predictor`'s prediction, the
one ``POST /v1/explain`` sends (:func:`explain_png`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError, did_you_mean
from ..inference import Predictor
from ..runs import Run
from .cam import MIN_MAP, check_method, choose_layer, compute_cam, layer_label
from .figures import heatmap_rgba, image_rgb, overlay, png_bytes, save_explanation, save_map


def _class_index(run: Run, target: int | str | None) -> int | None:
    names = list(run.dataset.class_names)
    if target is None or (isinstance(target, int) and 0 <= target < len(names)):
        return target
    if target in names:
        return names.index(target)
    raise ConfigError(f"unknown class {target!r}.{did_you_mean(target, names)} Classes: {', '.join(names)}")


def explain_image(run: Run, image: str | Path | np.ndarray, *, method: str = "gradcam",
                  target_class: int | str | None = None, layer: str | None = None, out_path: str | Path,
                  checkpoint: str = "best", metadata: dict[str, Any] | None = None,
                  array_path: str | Path | None = None) -> dict[str, Any]:
    """Predict one image (calibrated, at the checkpoint's operating point, as ``Predictor`` does) and save its
    CAM figure; with ``array_path`` also the raw map (float32 .npy in [0, 1], resized to the image's size).

    The CAM explains ``target_class`` (index or name), by default the predicted class.
    """
    from ..data.images import read_image

    check_method(method)
    target = _class_index(run, target_class)
    model, preprocess, post = run.artefact.load(checkpoint)
    is_file = isinstance(image, str | Path)
    arr = read_image(image, draft=preprocess.draft) if is_file else np.asarray(image)  # decoded as in training
    x = preprocess(arr).unsqueeze(0)
    side_inputs = None
    if run.inputs is not None:  # fused models: the metadata held fixed (None: the learned "missing" inputs)
        enc, _ = run.inputs.encode_requests(1, [metadata] if metadata else None, None)
        side_inputs = {k: torch.as_tensor(v) for k, v in enc.items()}
    elif metadata:
        raise DataError("this model uses the image only: it takes no metadata")
    with torch.no_grad():
        p = post.probabilities(model(x, **(side_inputs or {})).float().numpy(), run.dataset.task)[0]
    names = list(run.dataset.class_names)
    pred = int(p.argmax()) if run.dataset.task == "multilabel" else names.index(post.decide(p, run.dataset))
    target = pred if target is None else target
    layer, grid = choose_layer(model, x, layer, side_inputs)
    cam = compute_cam(model, x, method=method, target_class=target, layer=layer, side_inputs=side_inputs)[0]
    grid_text = f"{grid[0]}x{grid[1]} map" if grid else "map"
    title = (f"predicted {names[pred]} (p = {p[pred]:.3f}) · {method} for {names[target]} at {layer_label(layer)} "
             f"({grid_text})")
    path = save_explanation(out_path, x[0].permute(1, 2, 0).numpy(), cam, title)
    result = {"predicted": names[pred], "probability": float(p[pred]), "path": str(path), "target": names[target],
              "method": method, "layer": layer, "map_size": grid_text}
    if array_path is not None:
        size = read_image(image).shape[:2] if is_file and preprocess.draft else arr.shape[:2]  # the file's own size
        result["array"] = str(save_map(array_path, cam, size))
    return result


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


def explain_png(pred: Predictor, img: np.ndarray, method: str = "gradcam", metadata: dict[str, Any] | None = None,
                view: str = "overlay") -> Explanation:
    """One picture (``view``: overlay, heatmap or image) of the prediction's Grad-CAM (torch backend), with the
    class, its calibrated probability, the layer and the map's grid.

    Fused models: ``metadata`` (and text) as for prediction, so the map explains that prediction; without
    it the learned "missing" embeddings stand in. Bad keys raise DataError.
    """
    check_method(method)
    side_inputs, _ = pred.encode_inputs(1, [metadata] if metadata else None)
    x = pred.preprocess(img).unsqueeze(0)
    side_inputs = {k: torch.as_tensor(v) for k, v in side_inputs.items()} or None
    p = pred.probabilities(x, side_inputs)[0]
    k = int(p.argmax())
    name, prob = str(pred.spec.class_names[k]), float(p[k])
    image01 = x[0].permute(1, 2, 0).numpy() if x.shape[1] == 3 else x[0, 0].numpy()
    if view == "image":
        return Explanation(png_bytes(image_rgb(image01)), name, prob)
    layer, grid = choose_layer(pred.model, x, None, side_inputs)
    cam = compute_cam(pred.model, x, method=method, target_class=k, layer=layer, side_inputs=side_inputs)[0]
    picture = heatmap_rgba(cam) if view == "heatmap" else overlay(image01, cam)
    return Explanation(png_bytes(picture), name, prob, layer_label(layer), grid)
