"""medcls: medical image classification — train, evaluate, explain, export, serve.

The public API is imported lazily so that ``import medcls`` (and the CLI) stay fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "train": "medcls.api",
    "evaluate": "medcls.api",
    "predict": "medcls.api",
    "calibrate": "medcls.api",
    "validate": "medcls.api",
    "load": "medcls.artefact",
    "ModelSpec": "medcls.artefact",
    "load_run": "medcls.runs",
    "Run": "medcls.runs",
    "Config": "medcls.config",
    "load_config": "medcls.config",
    "create_model": "medcls.models",
    "Predictor": "medcls.inference",
    "check_data": "medcls.data.check",
    "cv": "medcls.experiments",
    "tune": "medcls.experiments",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medcls' has no attribute {name!r}")
