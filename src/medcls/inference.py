"""Prediction on new images with a run's own preprocessing and weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.io import read_image
from .engine.predict import probabilities
from .errors import DataError
from .runs import Run


class RunPredictor:
    """Loads a run's model once and predicts class probabilities for paths or arrays."""

    def __init__(self, run: Run, *, checkpoint: str = "best", device: torch.device | None = None,
                 batch_size: int = 64) -> None:
        self.run = run
        self.device = device or torch.device("cpu")
        self.model, _ = run.build_model(checkpoint, device=str(self.device))
        self.preprocess = run.preprocess
        self.batch_size = batch_size
        from .evaluate.clinical import load_postprocess

        post = load_postprocess(run.path) or {}
        self.temperature = float(post.get("temperature", 1.0))
        self.threshold = float(post.get("threshold", run.config.eval.threshold))
        self.operating_point = post.get("selected", "default")

    def _load(self, item: Any) -> tuple[str, np.ndarray]:
        if isinstance(item, str | Path):
            return str(item), read_image(item)
        if isinstance(item, np.ndarray):
            return "<array>", item
        raise DataError(f"expected an image path or a numpy array, got {type(item).__name__}")

    @torch.no_grad()
    def predict(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        spec = self.run.spec
        names = list(spec.class_names)
        thr = self.threshold
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = [self._load(it) for it in images[start : start + self.batch_size]]
            x = torch.stack([self.preprocess(img) for _, img in chunk]).to(self.device)
            probs = probabilities(self.model(x).float().cpu() / self.temperature, spec.task)
            for (name, _), p in zip(chunk, probs, strict=True):
                r: dict[str, Any] = {"file": name, "probabilities": dict(zip(names, map(float, p), strict=True))}
                if spec.task == "multilabel":
                    r["predicted"] = [c for c, v in zip(names, p, strict=True) if v >= thr]
                elif spec.task == "binary":
                    pos = spec.positive_index
                    r["predicted"] = names[pos] if p[pos] >= thr else names[1 - pos]
                    r["threshold"] = thr
                    r["operating_point"] = self.operating_point
                else:
                    r["predicted"] = names[int(p.argmax())]
                r["temperature"] = self.temperature
                results.append(r)
        return results
