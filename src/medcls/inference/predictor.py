"""``Predictor``: one object that turns images into calibrated class probabilities and decisions.

It loads a run directory or an exported bundle through :func:`medcls.artefact.open_artefact`
and runs the model with torch or onnxruntime. Preprocessing, temperature and the
operating point come from that artefact (the post-processing fitted for the loaded
checkpoint), so every consumer (CLI, Python, REST, web page) gets the same numbers as
``medcls evaluate``, in one result shape (:class:`~medcls.inference.schemas.Prediction`).

Multilabel models: probabilities are sigmoid(logits / T) per label (one T), and
the decision is the list of labels whose probability is >= that label's
threshold (chosen on validation); an empty list means "no finding".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..artefact import ModelSpec, Postprocess, open_artefact
from ..artefact.ood import FEATURES, OodGate, logits_and_features
from ..data.images import decode_image, read_image
from ..errors import ConfigError, DataError, MedclsError, OutOfDistributionError, RunError, did_you_mean
from ..transforms import Preprocess
from .ort import OUTPUT, ort_logits, ort_outputs, ort_session
from .schemas import OodResult, Prediction

log = logging.getLogger("medcls")

BACKENDS = ("auto", "torch", "onnx", "int8")
ONNX_FILES = {"onnx": "model.onnx", "int8": "model.int8.onnx"}


def resolve_backend(backend: str, art, device: torch.device | None) -> str:
    """``auto``: a bundle's ONNX graph on the CPU (parity-checked at export; 1.7x torch's speed on 2 cores,
    benchmarks/RESULTS.md), torch on a GPU and for a run directory."""
    if backend != "auto":
        return backend
    on_gpu = device is not None and device.type != "cpu"
    return "onnx" if art.kind == "bundle" and not on_gpu and art.path.joinpath(ONNX_FILES["onnx"]).is_file() \
        else "torch"


class Predictor:
    """Preprocess -> model (torch | onnxruntime) -> probabilities(logits / T) -> decision at the operating point."""

    def __init__(self, model_spec: ModelSpec, postprocess: Postprocess, *, model: torch.nn.Module | None = None,
                 session: Any = None, backend: str | None = None, device: torch.device | None = None,
                 batch_size: int = 64, inputs: Any = None, info: dict[str, Any] | None = None,
                 ood: OodGate | None = None, refuse_ood: bool = False) -> None:
        if (model is None) == (session is None):
            raise ValueError("give exactly one of model (torch) or session (onnxruntime)")
        self.model_spec, self.postprocess = model_spec, postprocess
        self.spec = model_spec.dataset
        if self.spec.task == "multilabel":
            postprocess.label_thresholds(self.spec.class_names)  # unknown label names fail here, not per request
        self.preprocess_cfg = model_spec.preprocess
        self.preprocess = Preprocess(model_spec.preprocess)
        self.model, self.session = model, session
        self.backend = backend or ("torch" if model is not None else "onnx")
        self.device = device or torch.device("cpu")
        self.batch_size = batch_size
        self.inputs = inputs  # medcls.multimodal.InputEncoder of a fused model (metadata/text), else None
        self.info = info or {}
        self.ood, self.refuse_ood = ood, refuse_ood  # the bundle's out-of-distribution gate; refuse flagged inputs
        self.load_args: dict[str, Any] | None = None  # how Predictor.load built it (to build it again elsewhere)
        if refuse_ood and ood is None:
            log.warning("refuse_ood is set but this %s has no out-of-distribution gate (a run directory, a fused "
                        "model or a bundle exported before the gate existed): nothing will be refused; export a "
                        "bundle with `medcls export` to get one", "run" if self.info.get("kind") == "run" else "model")

    # ------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | Path, *, backend: str = "torch", checkpoint: str = "best",
             device: torch.device | None = None, threads: int | None = None, refuse_ood: bool = False) -> Predictor:
        """From a bundle directory or a run directory (``checkpoint`` of a run: best | last).

        ``refuse_ood``: an image the bundle's out-of-distribution gate flags is refused
        (:class:`OutOfDistributionError`) instead of answered with ``ood.flagged``.
        """
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}."
                              f"{did_you_mean(backend, BACKENDS)}")
        pred = cls._build(path, backend=backend, checkpoint=checkpoint, device=device, threads=threads,
                          refuse_ood=refuse_ood)
        pred.load_args = {"path": str(path), "backend": pred.backend, "checkpoint": checkpoint, "refuse_ood": refuse_ood}
        return pred

    @classmethod
    def _build(cls, path: str | Path, *, backend: str, checkpoint: str, device: torch.device | None,
              threads: int | None, refuse_ood: bool) -> Predictor:
        art = open_artefact(path)
        backend = resolve_backend(backend, art, device)
        info = {**art.info, "kind": art.kind, "checkpoint": art.checkpoint_name(checkpoint)}
        if backend == "torch":  # the weights first: a corrupt checkpoint is the one error to report
            device = device or torch.device("cpu")
            model, _ = art.build_model(checkpoint, device)
            return cls(art.spec, art.postprocess_or_default(checkpoint), model=model, device=device, backend=backend,
                       inputs=art.inputs, info=info, ood=art.ood, refuse_ood=refuse_ood)
        if art.kind != "bundle":
            raise ConfigError(f"{path} is a run directory: only the torch backend runs it; "
                              f"export a bundle with `medcls export {path} -o BUNDLE` for {backend}")
        session = ort_session(art.file(ONNX_FILES[backend]), threads=threads)
        width = session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != art.spec.num_classes:
            raise RunError(f"{art.path / ONNX_FILES[backend]} outputs {width} logits but bundle.json names "
                           f"{art.spec.num_classes} classes ({', '.join(art.spec.dataset.class_names)})")
        gate = art.ood if FEATURES in {o.name for o in session.get_outputs()} else None
        return cls(art.spec, art.postprocess_or_default(checkpoint), session=session, backend=backend,
                   inputs=art.inputs, info=info, ood=gate, refuse_ood=refuse_ood)

    # ------------------------------------------------------------ properties
    @property
    def temperature(self) -> float:
        return self.postprocess.temperature

    @property
    def threshold(self) -> float:
        return self.postprocess.threshold

    @property
    def operating_point(self) -> str:
        return self.postprocess.selected

    @property
    def thresholds(self) -> dict[str, float] | None:
        return self.postprocess.label_thresholds(self.spec.class_names) if self.spec.task == "multilabel" else None

    @property
    def expected_inputs(self) -> dict[str, Any]:
        """What the model reads besides the image (``{}`` for image-only models)."""
        return self.inputs.describe() if self.inputs is not None else {}

    # --------------------------------------------------------------- inference
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
    def logits(self, x: torch.Tensor, side_inputs: dict[str, Any] | None = None) -> np.ndarray:
        """Raw logits for a preprocessed batch (N, C, S, S) in [0, 1] (and, for fused models, its side_inputs)."""
        if self.inputs is not None and not side_inputs:
            side_inputs, _ = self.encode_inputs(len(x))  # no metadata/text: the learned "missing" embeddings
        side_inputs = side_inputs or {}
        if self.model is not None:
            ex = {k: torch.as_tensor(v).to(self.device) for k, v in side_inputs.items()}
            return self.model(x.to(self.device), **ex).float().cpu().numpy()
        return ort_logits(self.session, x.numpy(), side_inputs={k: np.asarray(v) for k, v in side_inputs.items()})

    def probabilities(self, x: torch.Tensor, side_inputs: dict[str, Any] | None = None) -> np.ndarray:
        return self.postprocess.probabilities(self.logits(x, side_inputs), self.spec.task)

    @torch.no_grad()
    def probabilities_and_ood(self, x: torch.Tensor, side_inputs: dict[str, Any] | None = None
                              ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and the out-of-distribution scores of a batch (None without a gate)."""
        if self.ood is None:
            return self.probabilities(x, side_inputs), None
        p, f = self.probabilities_and_features(x)
        return p, self.ood.score(f)

    @torch.no_grad()
    def probabilities_and_features(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and penultimate features of a batch (image-only models whose bundle has a gate)."""
        lg, f = self.logits_and_features(x)
        return self.postprocess.probabilities(lg, self.spec.task), f

    @torch.no_grad()
    def logits_and_features(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits and penultimate features of a batch (image-only models whose bundle has a gate)."""
        if self.model is not None:
            lg, f = (t.float().cpu().numpy() for t in logits_and_features(self.model, x.to(self.device)))
        elif self.ood is not None:
            lg, f = ort_outputs(self.session, x.numpy(), [OUTPUT, FEATURES])
        else:
            raise RunError("this ONNX graph outputs no features (a bundle without an out-of-distribution gate)")
        return lg, f

    def scored(self, x: torch.Tensor,
               side_inputs: dict[str, Any] | None = None) -> list[tuple[np.ndarray, float | None]]:
        """(probabilities, out-of-distribution score or None) per image of a batch: what :meth:`result`
        takes, for :meth:`predict` and the service's micro-batcher alike."""
        p, s = self.probabilities_and_ood(x, side_inputs)
        return list(zip(p, s if s is not None else [None] * len(p), strict=True))

    def ood_result(self, score: float | None) -> OodResult:
        return OodResult(**self.ood.result(score)) if self.ood is not None and score is not None \
            else OodResult(available=False)

    def refusal(self, ood: OodResult) -> str | None:
        """The one line refusing a flagged image when ``refuse_ood`` is set, else None."""
        if not (self.refuse_ood and ood.flagged):
            return None
        return (f"the image looks out of distribution for this model (score {ood.score:.3g} > threshold "
                f"{ood.threshold:.3g}: unlike its training images); refused instead of predicted")

    def decide(self, p: np.ndarray) -> str | list[str]:
        """Binary: the class at the operating point; multiclass: arg-max; multilabel: labels with p >= their
        threshold (possibly none)."""
        return self.postprocess.decide(p, self.spec)

    def result(self, p: np.ndarray, *, file: str | None = None, used: list[str] | None = None,
               ood_score: float | None = None) -> Prediction:
        """The one shape of a prediction (``Predictor.predict``, the REST service and its OpenAPI page)."""
        names, predicted = list(self.spec.class_names), self.decide(p)
        return Prediction(
            file=file, task=self.spec.task, probabilities=dict(zip(names, map(float, p), strict=True)),
            predicted=predicted, findings=list(predicted) if self.spec.task == "multilabel" else None,
            calibrated=self.postprocess.calibrated, temperature=self.temperature,
            decision=self.postprocess.decision(self.spec, predicted),
            inputs_used=(used or ["image"]) if self.inputs is not None else None,
            model={"name": self.model_spec.architecture, "backend": self.backend, "medcls_version": __version__},
            ood=self.ood_result(ood_score))

    def _read(self, item: Any) -> tuple[str, np.ndarray]:
        if isinstance(item, str | Path):
            return str(item), read_image(item, draft=self.preprocess.draft)
        if isinstance(item, bytes | bytearray):
            return "<bytes>", decode_image(bytes(item), draft=self.preprocess.draft)
        if isinstance(item, np.ndarray):
            return "<array>", item
        raise DataError(f"expected an image path, bytes or a numpy array, got {type(item).__name__}")

    def _load(self, item: Any, on_error: str) -> tuple[str, torch.Tensor | None, str | None]:
        name = str(item) if isinstance(item, str | Path) else None
        try:
            name, img = self._read(item)
            return name, self.preprocess(img), None
        except MedclsError as e:
            if on_error == "raise":
                raise
            return name or f"<{type(item).__name__}>", None, str(e)

    def predict(self, images: Sequence[Any], *, metadata: Sequence[dict[str, Any] | None] | None = None,
                text: Sequence[str | None] | None = None, on_error: str = "raise") -> list[dict[str, Any]]:
        """One dict per image (:class:`Prediction` fields): calibrated probabilities and the decision.

        Fused models also take ``metadata`` (one dict per image, None = unknown) and ``text`` (one per
        image); unknown metadata keys are a :class:`DataError`. ``on_error="skip"``: an image that cannot
        be read or preprocessed gives ``{"file", "error": {"message"}}`` and the others are predicted.
        """
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        side_inputs_all, used = self.encode_inputs(len(images), metadata, text)
        results: list[dict[str, Any]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [self._load(it, on_error) for it in images[start : start + self.batch_size]]
            x = [t for _, t, _ in chunk if t is not None]
            rows = slice(start, start + len(chunk))
            results += self.predict_batch([name for name, _, _ in chunk], torch.stack(x) if x else None,
                                          [err for _, _, err in chunk],
                                          side_inputs={k: v[rows] for k, v in side_inputs_all.items()},
                                          used=used[rows], on_error=on_error)
        return results

    def predict_batch(self, names: Sequence[str], x: torch.Tensor | None, errors: Sequence[str | None], *,
                      side_inputs: dict[str, np.ndarray] | None = None, used: Sequence[list[str]] | None = None,
                      on_error: str = "skip") -> list[dict[str, Any]]:
        """The result dicts of one batch already read and preprocessed: ``x`` stacks the images whose
        ``errors`` entry is None, in order (None when there are none); ``side_inputs`` and ``used`` hold a
        row per name. What :meth:`predict` and the streaming job (:mod:`medcls.inference.batch`) share."""
        good = [k for k, err in enumerate(errors) if err is None]
        if len(good) != (0 if x is None else len(x)):
            raise ValueError(f"{len(good)} images without an error but {0 if x is None else len(x)} tensors")
        scored = iter(self.scored(x, {k: v[good] for k, v in (side_inputs or {}).items()}) if good else [])
        results: list[dict[str, Any]] = []
        for k, (name, err) in enumerate(zip(names, errors, strict=True)):
            if err is None:
                p, score = next(scored)
                res = self.result(p, file=name, used=None if used is None else used[k], ood_score=score)
                if (err := self.refusal(res.ood)) is None:
                    results.append(res.model_dump(exclude_none=True))
                    continue
                if on_error == "raise":
                    raise OutOfDistributionError(f"{name}: {err}")
            results.append({"file": name, "error": {"message": err}})
        return results
