"""A deadline for receiving a request's headers, on uvicorn's own HTTP protocol class (slowloris).

Written here because uvicorn has none (its issue #157, ``--timeout-request-start``, is still open):
``timeout_keep_alive`` only runs between requests, every byte received resets it, and a fresh
connection that never completes its headers is held forever. An ASGI middleware cannot help: the
app is called only once the headers are complete. The body has its own deadline in
:class:`~medcls.serve.limits.RequestLimits`, where the route and its size limit are known.
"""

from __future__ import annotations

import asyncio
import json

_BODY = json.dumps({"error": {"code": "timeout", "message": "request headers not received in time"}}).encode()
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


def header_deadline_protocol(base: type, seconds: float) -> type:
    """``base`` (uvicorn's h11 or httptools protocol) closing, with a 408, every connection whose next
    request's headers are not complete ``seconds`` after it opened or after its previous response."""

    class HeaderDeadline(base):
        _deadline: asyncio.TimerHandle | None = None
        _armed_for: object = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._armed_for = self.cycle  # a new request replaces the cycle: its headers arrived
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.cycle is self._armed_for and not self.transport.is_closing():
                answered = self.cycle is not None and self.cycle.more_body  # the rest of an answered body
                if not answered:
                    self.transport.write(TIMEOUT_RESPONSE)  # raw: h11 cannot answer a request it has not parsed
                self.transport.close()

    HeaderDeadline.__name__ = HeaderDeadline.__qualname__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadline


def http_protocol(seconds: float) -> type:
    """uvicorn's default HTTP protocol (httptools when installed, else h11) with the header deadline."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return header_deadline_protocol(AutoHTTPProtocol, seconds)
