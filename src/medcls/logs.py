"""Console logging for the ``medcls`` loggers: what the CLI installs, and what the Python API installs
when nobody configured logging (so a notebook sees the epoch lines instead of nothing)."""

from __future__ import annotations

import logging
import sys

LOGGER = "medcls"


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (survives redirection, e.g. under pytest or Jupyter)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def console_logging(verbose: bool = False) -> None:
    """INFO (DEBUG when ``verbose``) lines of every ``medcls.*`` logger on stderr, message only; idempotent."""
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger(LOGGER)
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def ensure_console_logging() -> None:
    """:func:`console_logging`, unless the application configured logging itself (handlers on ``medcls`` or
    on the root logger), whose choices are then kept."""
    if logging.getLogger(LOGGER).handlers or logging.getLogger().handlers:
        return
    console_logging()
