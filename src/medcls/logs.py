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


class Progress:
    """Log lines for a long step with a known size: ``<what>: 1,280/5,000 (26%), 12 s, about 35 s left`` at
    most every ``every`` seconds, and one closing line with the time taken (a bar would garble log files)."""

    def __init__(self, what: str, total: int, *, every: float = 5.0, logger: logging.Logger | None = None,
                 clock=None) -> None:
        import time

        self.what, self.total, self.every = what, max(int(total), 0), every
        self.log, self.clock = logger or logging.getLogger(LOGGER), clock or time.monotonic
        self.done_n, self.start = 0, self.clock()
        self.last = self.start
        self.log.info("%s (%s) ...", what, f"{self.total:,}")

    def update(self, n: int = 1) -> None:
        self.done_n += n
        now = self.clock()
        if now - self.last >= self.every and self.done_n < self.total:
            self.last, took = now, now - self.start
            left = took / self.done_n * (self.total - self.done_n) if self.done_n else float("nan")
            self.log.info("%s: %s/%s (%d%%), %.0f s, about %.0f s left", self.what, f"{self.done_n:,}",
                          f"{self.total:,}", 100 * self.done_n // max(self.total, 1), took, left)

    def close(self) -> None:
        self.log.info("%s: done in %.1f s", self.what, self.clock() - self.start)
