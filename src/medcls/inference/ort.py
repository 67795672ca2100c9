"""ONNX Runtime, the runtime half of ONNX: a session on an exported model (CPU, the thread count, full graph
optimisation), its named outputs computed in batches, and the names of the graph's image input and logits
output that ``medcls.export`` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT, OUTPUT = "image", "logits"


def ort_session(path: str | Path, *, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_logits(session, x: np.ndarray, batch_size: int = 64,
               side_inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Logits of ``x`` (and, for fused models, the named ``side_inputs`` the graph declares) in batches."""
    return ort_outputs(session, x, [OUTPUT], batch_size, side_inputs)[0]


def ort_outputs(session, x: np.ndarray, outputs: list[str], batch_size: int = 64,
                side_inputs: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """The named ``outputs`` of ``x`` in batches (one array per output)."""
    wanted = {i.name for i in session.get_inputs()}
    side_inputs = {k: v for k, v in (side_inputs or {}).items() if k in wanted}

    def feed(i: int) -> dict[str, np.ndarray]:
        d = {INPUT: np.ascontiguousarray(x[i : i + batch_size], np.float32)}
        d.update({k: np.ascontiguousarray(v[i : i + batch_size]) for k, v in side_inputs.items()})
        return {k: v for k, v in d.items() if k in wanted}

    runs = [session.run(outputs, feed(i)) for i in range(0, len(x), batch_size)]
    return [np.concatenate([r[k] for r in runs]) if runs else np.zeros((0, 0), np.float32) for k in range(len(outputs))]
