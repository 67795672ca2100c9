"""A graceful stop for orchestrators: on SIGTERM, drain, then shut down (uvicorn's own shutdown).

uvicorn stops listening as soon as the signal arrives, so a request routed to the pod just before its
endpoint was removed gets a refused connection. Here the first SIGTERM (or Ctrl-C) starts a drain instead:
the socket stays open, ``/ready`` and every new request get 503 ``shutting_down`` with ``Connection: close``
(``/health`` stays 200: the process is alive), and the requests already in flight run to completion. When
none is left, or ``timeout_graceful_shutdown`` seconds have passed, uvicorn's shutdown runs with the time that
remains, and the process exits by re-raising the signal (status 143 for SIGTERM, as uvicorn does). A second
signal skips the drain.
"""

from __future__ import annotations

import logging
import time

import uvicorn

log = logging.getLogger("medcls")

class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state) -> None:
        super().__init__(config)
        self.state, self.grace = state, float(config.timeout_graceful_shutdown or 0)
        self.drain_started: float | None = None
        self.drain_signal = 0
        state.draining = False

    def handle_exit(self, sig, frame) -> None:
        if self.drain_started is None and not self.should_exit:
            self.drain_started, self.drain_signal, self.state.draining = time.monotonic(), sig, True
            log.warning("signal %d: draining (%d request(s) in flight, at most %.0f s), then exiting",
                        sig, len(self.server_state.tasks), self.grace)
            return
        super().handle_exit(sig, frame)  # a second signal: no more waiting

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            left = self.grace - (time.monotonic() - self.drain_started)
            if not self.server_state.tasks or left <= 0:
                self.config.timeout_graceful_shutdown = max(left, 1.0)
                super().handle_exit(self.drain_signal, None)
        return await super().on_tick(counter)
