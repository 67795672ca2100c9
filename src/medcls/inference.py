"""``Predictor``: one object that turns images into calibrated class probabilities and decisions.

It is built from a run directory or from an exported bundle and runs the model
with torch or onnxruntime. Preprocessing (``Preprocess``), temperature and the
operating point come from the run/bundle, so every consumer (CLI, Python, REST)
gets the same numbers as ``medcls evaluate``.

Multilabel models: probabilities are sigmoid(logits / T) per label (one T), and
the decision is the list of labels whose probability is >= that label's
threshold (chosen on validation, ``postprocess.json`` / ``bundle.json``
``thresholds``); an empty list means "no finding".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.io import decode_image, read_image
from .data.spec import DatasetSpec
from .engine.predict import probabilities
from .errors import ConfigError, DataError, RunError
from .metrics.operating_points import threshold_vector
from .transforms import Preprocess, PreprocessConfig

BACKENDS = ("torch", "onnx", "int8")


class Predictor:
    """Preprocess -> model (torch | onnxruntime) -> softmax(logits / T) -> decision at the operating point.

    ``thresholds`` (multilabel only): ``{label: threshold}`` for every label, or
    ``None`` to use ``threshold`` for all labels.
    """

    def __init__(self, *, spec: DatasetSpec, preprocess: PreprocessConfig, model: torch.nn.Module | None = None,
                 session: Any = None, temperature: float = 1.0, threshold: float = 0.5,
                 operating_point: str = "default", device: torch.device | None = None, batch_size: int = 64,
                 info: dict[str, Any] | None = None, thresholds: dict[str, float] | None = None,
                 inputs: Any = None) -> None:
        if (model is None) == (session is None):
            raise ValueError("give exactly one of model (torch) or session (onnxruntime)")
        self.thresholds: dict[str, float] | None = None
        if spec.task == "multilabel":
            names = list(spec.class_names)
            given = dict(thresholds) if thresholds is not None else dict.fromkeys(names, threshold)
            extra = [k for k in given if k not in names]
            if extra:
                from .errors import did_you_mean

                raise ConfigError(f"thresholds name unknown label(s) {extra}.{did_you_mean(extra[0], names)} "
                                  f"Labels: {names}")
            self.thresholds = dict(zip(names, threshold_vector(given, names).tolist(), strict=True))
        self.spec, self.preprocess_cfg = spec, preprocess
        self.preprocess = Preprocess(preprocess)
        self.model, self.session = model, session
        self.temperature, self.threshold, self.operating_point = float(temperature), float(threshold), operating_point
        self.device = device or torch.device("cpu")
        self.batch_size = batch_size
        self.info = info or {}
        self.backend = "torch" if model is not None else self.info.get("backend", "onnx")
        self.inputs = inputs  # medcls.multimodal.InputEncoder of a fused model (metadata/text), else None

    # ------------------------------------------------------------ construction
    @classmethod
    def from_run(cls, run, *, checkpoint: str = "best", device: torch.device | None = None) -> Predictor:
        from .evaluation.clinical import load_postprocess

        device = device or torch.device("cpu")
        model, _ = run.build_model(checkpoint, device=str(device))
        post = load_postprocess(run.path) or {}
        return cls(spec=run.spec, preprocess=run.preprocess_cfg, model=model, device=device,
                   temperature=post.get("temperature", 1.0), threshold=post.get("threshold", run.config.eval.threshold),
                   operating_point=post.get("selected", "default"), thresholds=post.get("thresholds"),
                   info={"source": str(run.path), "checkpoint": checkpoint, "backend": "torch",
                         "architecture": {"name": run.config.model.name, "fusion": run.config.model.fusion}},
                   inputs=run.inputs)

    @classmethod
    def load(cls, path: str | Path, *, backend: str = "torch", checkpoint: str = "best",
             device: torch.device | None = None, threads: int | None = None) -> Predictor:
        """Load from a bundle directory (``bundle.json``) or a run directory (``config.yaml``)."""
        p = Path(path)
        if backend not in BACKENDS:
            from .errors import did_you_mean

            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.{did_you_mean(backend, BACKENDS)}")
        if (p / "bundle.json").is_file():
            from .export.bundle import load_bundle

            return load_bundle(p, backend=backend, device=device, threads=threads)
        if (p / "config.yaml").is_file():
            if backend != "torch":
                raise ConfigError(f"{p} is a run directory: only the torch backend runs it; "
                                  f"export a bundle with `medcls export {p} -o BUNDLE` for {backend}")
            from .runs import load_run

            return cls.from_run(load_run(p), checkpoint=checkpoint, device=device)
        raise RunError(f"{p} is neither a medcls bundle (bundle.json) nor a run directory (config.yaml)")

    # --------------------------------------------------------------- inference
    def _load(self, item: Any) -> tuple[str, np.ndarray]:
        if isinstance(item, str | Path):
            return str(item), read_image(item)
        if isinstance(item, bytes | bytearray):
            return "<bytes>", decode_image(bytes(item))
        if isinstance(item, np.ndarray):
            return "<array>", item
        raise DataError(f"expected an image path, bytes or a numpy array, got {type(item).__name__}")

    @property
    def expected_inputs(self) -> dict[str, Any]:
        """What the model reads besides the image (``{}`` for image-only models)."""
        return self.inputs.describe() if self.inputs is not None else {}

    def encode_inputs(self, n: int, metadata=None, text=None) -> tuple[dict[str, np.ndarray], list[list[str]]]:
        """Extra model inputs for ``n`` images and the inputs used per image (metadata keys are checked)."""
        if self.inputs is None:
            if any(m for m in (metadata if isinstance(metadata, list | tuple) else [metadata])) or \
                    any(t for t in (text if isinstance(text, list | tuple) else [text])):
                raise DataError("this model uses the image only: it takes no metadata or text "
                                "(expected keys: none)")
            return {}, [["image"]] * n
        return self.inputs.encode_requests(n, metadata, text)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, extras: dict[str, Any] | None = None) -> np.ndarray:
        """Raw logits for a preprocessed batch (N, C, S, S) in [0, 1] (and, for fused models, its extras)."""
        if self.inputs is not None and not extras:
            extras, _ = self.encode_inputs(len(x))  # no metadata/text: the learned "missing" embeddings
        extras = extras or {}
        if self.model is not None:
            ex = {k: torch.as_tensor(v).to(self.device) for k, v in extras.items()}
            return self.model(x.to(self.device), **ex).float().cpu().numpy()
        from .export.onnx import ort_logits

        return ort_logits(self.session, x.numpy(), extras={k: np.asarray(v) for k, v in extras.items()})

    def probabilities(self, x: torch.Tensor, extras: dict[str, Any] | None = None) -> np.ndarray:
        return probabilities(self.logits(x, extras) / self.temperature, self.spec.task)

    def decide(self, p: np.ndarray) -> str | list[str]:
        """Binary: the class at the operating point; multiclass: arg-max; multilabel: labels with p >= their
        threshold (possibly none)."""
        names = list(self.spec.class_names)
        if self.spec.task == "multilabel":
            return [c for c, v in zip(names, p, strict=True) if v >= self.thresholds[c]]
        if self.spec.task == "binary":
            pos = self.spec.positive_index
            return names[pos] if p[pos] >= self.threshold else names[1 - pos]
        return names[int(p.argmax())]

    def predict(self, images: Sequence[Any], *, metadata: Sequence[dict[str, Any] | None] | None = None,
                text: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
        """One dict per image: file, probabilities (calibrated), predicted (at the operating point).

        Fused models also take ``metadata`` (one dict per image, None = unknown) and ``text`` (one per image);
        each result then lists the ``inputs_used``. Unknown metadata keys are a :class:`DataError`.
        """
        names = list(self.spec.class_names)
        extras_all, used = self.encode_inputs(len(images), metadata, text)
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = [self._load(it) for it in images[start : start + self.batch_size]]
            x = torch.stack([self.preprocess(img) for _, img in chunk])
            extras = {k: v[start : start + len(chunk)] for k, v in extras_all.items()}
            for j, ((name, _), p) in enumerate(zip(chunk, self.probabilities(x, extras), strict=True)):
                r: dict[str, Any] = {"file": name, "probabilities": dict(zip(names, map(float, p), strict=True)),
                                     "predicted": self.decide(p), "temperature": self.temperature}
                if self.spec.task == "binary":
                    r["threshold"], r["operating_point"] = self.threshold, self.operating_point
                elif self.spec.task == "multilabel":
                    r["thresholds"], r["operating_point"] = dict(self.thresholds), self.operating_point
                if self.inputs is not None:
                    r["inputs_used"] = used[start + j]
                results.append(r)
        return results
