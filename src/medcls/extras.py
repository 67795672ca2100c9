"""Optional features and the extra that installs each: one line naming the extra when it is missing.

The core install trains, evaluates, exports and predicts; the server, text encoders, tuning, tracking,
pruning and DICOM compression codecs come as extras (``pip install 'medcls[serve]'``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MedclsError

# module -> extra that provides it (the names in pyproject's [project.optional-dependencies])
EXTRA_OF = {
    "fastapi": "serve", "uvicorn": "serve", "python_multipart": "serve", "prometheus_client": "serve",
    "transformers": "text", "optuna": "tune", "mlflow": "tracking", "sqlalchemy": "tracking",
    "tensorboard": "tracking", "torch.utils.tensorboard": "tracking", "torch_pruning": "prune",
    "pylibjpeg": "dicom", "pyarrow": "parquet", "monai": "bench",
}


class MissingExtraError(MedclsError, ImportError):
    """A feature needs a package from an extra that is not installed."""


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = EXTRA_OF.get(module, "all")
        raise MissingExtraError(f"{feature} needs the '{extra}' extra ({e.name or module} is not installed): "
                                f"pip install 'medcls[{extra}]'") from None


def require_all(feature: str, *modules: str) -> None:
    """:func:`require` each of ``modules`` (the first missing one is named)."""
    for module in modules:
        require(module, feature)


SERVE_MODULES = ("fastapi", "uvicorn", "python_multipart", "prometheus_client")
