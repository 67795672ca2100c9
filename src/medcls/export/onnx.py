"""ONNX export of a :class:`~medcls.models.Classifier` (normalisation included) with dynamic batch."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from ..errors import ModelError
from ..inference.ort import INPUT, OUTPUT

log = logging.getLogger("medcls")


def export_onnx(model: torch.nn.Module, path: str | Path, *, in_chans: int, size: int, opset: int = 18,
                side_inputs: dict[str, torch.Tensor] | None = None, features: bool = False) -> Path:
    """Write ``model`` (eval mode, fp32) to ``path``: input ``image`` (N, C, S, S) in [0, 1] -> ``logits``.

    Fused models take ``side_inputs`` (example tensors of their named side inputs: ``numeric``, ``categorical``,
    ``input_ids``, ``present`` ...), which become further named ONNX inputs with a dynamic batch axis.
    ``features``: a second output, the penultimate features the out-of-distribution gate scores.
    """
    from ..artefact.ood import FEATURES, WithFeatures

    path = Path(path)
    model = model.eval().float().to("cpu").to(memory_format=torch.contiguous_format)
    x = torch.rand(2, in_chans, size, size)
    names = list(side_inputs or {})
    outputs = [OUTPUT, FEATURES] if features else [OUTPUT]
    if features:
        model = WithFeatures(model).eval()
    args: tuple = (x,)
    if names:
        from ..multimodal import Positional

        model = Positional(model, names).eval()
        args = (x, *(side_inputs[k][:2].expand(2, *side_inputs[k].shape[1:]).contiguous() for k in names))
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
