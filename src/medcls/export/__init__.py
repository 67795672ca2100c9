"""Export a run as a self-describing bundle: safetensors weights, ONNX (fp32, optional INT8), bundle.json."""

from .bundle import export_bundle, load_bundle

__all__ = ["export_bundle", "load_bundle"]
