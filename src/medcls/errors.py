"""User-facing errors.

Everything raised on bad user input derives from :class:`MedclsError`; the CLI
prints its message (no traceback) and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MedclsError(Exception):
    """Base class for errors caused by user input (config, data, paths, models)."""


class ConfigError(MedclsError, ValueError):
    """A configuration key or value is invalid."""


class DataError(MedclsError, ValueError):
    """A dataset, file or image cannot be used as given."""


class ModelError(MedclsError, ValueError):
    """A model cannot be created or loaded."""


class RunError(MedclsError, ValueError):
    """A run directory is missing, incomplete or would be overwritten."""


def did_you_mean(name: str, choices: Iterable[str], *, n: int = 3) -> str:
    """Return a ``" Did you mean 'x'?"`` suffix for ``name`` (empty if nothing is close)."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


class OutOfDistributionError(DataError):
    """An input the model's out-of-distribution gate flags, refused (``refuse_ood``) rather than answered."""
