"""Static INT8 quantisation (QDQ, per-channel) calibrated on real training images.

Dynamic INT8 turns convolutions into ConvInteger, which is several times
*slower* on CPUs; static QDQ quantisation after ``quant_pre_process`` is the
fast path, so that is the only one offered.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..inference.ort import INPUT


class _Reader:
    """onnxruntime CalibrationDataReader over preprocessed images (N, C, S, S)."""

    def __init__(self, x: np.ndarray, batch_size: int = 16) -> None:
        self.batches = [np.ascontiguousarray(x[i : i + batch_size], np.float32) for i in range(0, len(x), batch_size)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {INPUT: self.batches[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


def quantize_static_int8(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray) -> Path:
    """Write a QDQ INT8 model (QUInt8 activations, per-channel QInt8 weights) calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ModelError("INT8 calibration needs at least one image")
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(calibration)
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out_path.with_suffix(".tmp")), reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    out_path.with_suffix(".tmp").replace(out_path)
    return out_path
