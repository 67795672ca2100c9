"""Export a run as a self-describing bundle: safetensors weights, ONNX (fp32, optional INT8), bundle.json.

Bundles are read back by :func:`medcls.artefact.open_artefact` (and ``Predictor.load``), like runs.
"""

from .bundle import export_bundle

__all__ = ["export_bundle"]
