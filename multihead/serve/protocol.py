"""uvicorn's h11 protocol with deadlines: a request's headers and its body must each arrive in time.

uvicorn closes idle keep-alive connections, but a client that sends its headers a byte at a time, or its body
at one byte a second, keeps a connection (and, with the body, a request) open as long as it likes. The ASGI
app never sees unfinished headers, so the deadline lives in the protocol: one timer from the connection (or
the previous response) until the headers are complete, another from then until the body is.

Connections still sending their headers are also counted apart from requests (issue 36): 64 sockets trickling
headers used to fill uvicorn's ``limit_concurrency`` and every real ``/healthz`` got 503. Now at most
``max_pending`` connections may be waiting for their headers; one more closes the one that has waited longest (a
real client sends its headers in milliseconds), and requests in progress are limited by the app instead
(:mod:`multihead.serve.middleware`), so header tricklers never take a real request's place.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["guarded_protocol"]

logger = logging.getLogger(__name__)


def guarded_protocol(*, header_timeout_s: float, body_timeout_s: float,
                     max_pending: int | None = None) -> type[H11Protocol]:
    """An :class:`H11Protocol` subclass closing connections whose headers or body are late (uvicorn's ``http=``),
    and, past ``max_pending`` connections waiting for their headers, the one that has waited longest."""
    waiting: dict[H11Protocol, None] = {}  # connections in their header phase, the longest waiting first

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None
            self._phase = "headers"

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm("headers", header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            waiting.pop(self, None)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        def _follow(self) -> None:
            """Move the deadline with the request: headers, then body, then none until the next request."""
            state = self.conn.their_state
            if state is h11.IDLE and self._phase != "headers" and not self.transport.is_closing():
                self._arm("headers", header_timeout_s)
            elif state is h11.SEND_BODY and self._phase == "headers":
                self._arm("body", body_timeout_s)
            elif state not in (h11.IDLE, h11.SEND_BODY):
                self._disarm()
                self._phase = "done"

        def _arm(self, phase: str, seconds: float) -> None:
            self._disarm()
            self._phase = phase
            self._deadline = self.loop.call_later(seconds, self._expire)
            if phase == "headers":
                waiting[self] = None
                if max_pending is not None and len(waiting) > max_pending:
                    oldest = next(iter(waiting))
                    waiting.pop(oldest)
                    logger.info("closing a connection from %s: %d connections are waiting for their request "
                                "headers, the limit is %d", oldest.client, max_pending + 1, max_pending)
                    oldest.transport.close()

        def _disarm(self) -> None:
            waiting.pop(self, None)
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                limit = header_timeout_s if self._phase == "headers" else body_timeout_s
                logger.info("closing a connection from %s: its request %s took more than %g s", self.client,
                            self._phase, limit)
                self.transport.close()  # the app, if it has the request, sees http.disconnect

    return GuardedH11Protocol
