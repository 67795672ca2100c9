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


def export_onnx(model: torch.nn.Module, path: str | Path, *, in_chans: int, size: int, opset: int = 18) -> Path:
    """Write ``model`` (eval mode, fp32) to ``path``: input ``image`` (N, C, S, S) in [0, 1] -> ``logits``."""
    path = Path(path)
    model = model.eval().float().to("cpu").to(memory_format=torch.contiguous_format)
    x = torch.rand(2, in_chans, size, size)
    tmp = path.with_suffix(".onnx.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(tmp), input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=opset,
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


def ort_logits(session, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    out = [session.run([OUTPUT], {INPUT: np.ascontiguousarray(x[i : i + batch_size], np.float32)})[0]
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
