"""ONNX export of a :class:`~medcls.models.Classifier` (normalisation included) with dynamic batch."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError

log = logging.getLogger("medcls")

INPUT, OUTPUT = "image", "logits"


def export_onnx(model: torch.nn.Module, path: str | Path, *, in_chans: int, size: int, opset: int = 18,
                extras: dict[str, torch.Tensor] | None = None, features: bool = False) -> Path:
    """Write ``model`` (eval mode, fp32) to ``path``: input ``image`` (N, C, S, S) in [0, 1] -> ``logits``.

    Fused models take ``extras`` (example tensors of their named extra inputs: ``numeric``, ``categorical``,
    ``input_ids``, ``present`` ...), which become further named ONNX inputs with a dynamic batch axis.
    ``features``: a second output, the penultimate features the out-of-distribution gate scores.
    """
    from ..artefact.ood import FEATURES, WithFeatures

    path = Path(path)
    model = model.eval().float().to("cpu").to(memory_format=torch.contiguous_format)
    x = torch.rand(2, in_chans, size, size)
    names = list(extras or {})
    outputs = [OUTPUT, FEATURES] if features else [OUTPUT]
    if features:
        model = WithFeatures(model).eval()
    args: tuple = (x,)
    if names:
        from ..multimodal import Positional

        model = Positional(model, names).eval()
        args = (x, *(extras[k][:2].expand(2, *extras[k].shape[1:]).contiguous() for k in names))
    tmp = path.with_suffix(".onnx.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(tmp), input_names=[INPUT, *names], output_names=outputs,
                              dynamic_axes={n: {0: "batch"} for n in (INPUT, *names, *outputs)}, opset_version=opset,
                              dynamo=False)
    except Exception as e:  # exporter errors are many and version-specific
        tmp.unlink(missing_ok=True)
        raise ModelError(f"ONNX export failed for {type(model).__name__}: {type(e).__name__}: {e}") from None
    tmp.replace(path)
    return path


def ort_session(path: str | Path, *, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_logits(session, x: np.ndarray, batch_size: int = 64, extras: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Logits of ``x`` (and, for fused models, the named ``extras`` the graph declares) in batches."""
    return ort_outputs(session, x, [OUTPUT], batch_size, extras)[0]


def ort_outputs(session, x: np.ndarray, outputs: list[str], batch_size: int = 64,
                extras: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """The named ``outputs`` of ``x`` in batches (one array per output)."""
    wanted = {i.name for i in session.get_inputs()}
    extras = {k: v for k, v in (extras or {}).items() if k in wanted}

    def feed(i: int) -> dict[str, np.ndarray]:
        d = {INPUT: np.ascontiguousarray(x[i : i + batch_size], np.float32)}
        d.update({k: np.ascontiguousarray(v[i : i + batch_size]) for k, v in extras.items()})
        return {k: v for k, v in d.items() if k in wanted}

    runs = [session.run(outputs, feed(i)) for i in range(0, len(x), batch_size)]
    return [np.concatenate([r[k] for r in runs]) if runs else np.zeros((0, 0), np.float32) for k in range(len(outputs))]
