"""The limits checked at the edge, before a route runs: body size, host, origin, requests in progress.

ASGI middlewares of their own (not FastAPI dependencies), so a request over a limit is refused before its body is
read or any route's work begins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

__all__ = ["BodyLimit", "HostCheck", "OriginCheck", "RequestLimit"]


class BodyLimit:
    """413 for a body over ``max_bytes``: from Content-Length before reading, or while a chunked body streams."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self) -> str:
        return (f"request body is larger than the limit of {self.max_bytes:,} bytes ({self.max_bytes / 2**20:.1f} "
                "MiB): send fewer or smaller images")

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                await JSONResponse({"detail": "Content-Length is not a whole number of bytes"}, 400)(
                    scope, receive, send)
                return
            if length > self.max_bytes:
                await JSONResponse({"detail": self._too_large()}, 413, headers={"Connection": "close"})(
                    scope, receive, send)
                return
        received = 0
        body_done = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal received, body_done
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:  # raised inside the route's body parsing: becomes the 413, and
                    # the connection closes rather than reading the rest of an endless chunked body
                    raise HTTPException(413, self._too_large(), headers={"Connection": "close"})
            return message

        async def closing_send(message: dict[str, Any]) -> None:
            # Any answer given before the body is in (a 413, or a 400 for a body that is no multipart) closes
            # the connection: otherwise the server would read the rest of the body to find the next request.
            if message["type"] == "http.response.start" and not body_done:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, counting_receive, closing_send)


class HostCheck:
    """400 unless the Host header names one of ``allowed`` (with any port): a page on another site cannot reach a
    loopback server through a DNS name rebound to 127.0.0.1."""

    def __init__(self, app: Callable[..., Awaitable[None]], allowed: tuple[str, ...]) -> None:
        self.app, self.allowed = app, {host.lower().strip("[]") for host in allowed}

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").lower()
            name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
            if name not in self.allowed:
                await JSONResponse({"detail": f"Host header {host[:100]!r} is not one this server answers to "
                                              f"({', '.join(sorted(self.allowed))})"}, 400,
                                   headers={"Connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class OriginCheck:
    """403 for a POST (or any method but GET, HEAD and OPTIONS) whose ``Origin`` is another site than the server's
    own and not one of ``allowed``: a page elsewhere cannot make a visitor's browser use the server. Requests
    without ``Origin`` (curl, scripts) pass; responses to allowed origins say so (CORS), so their pages can read
    them."""

    SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: Callable[..., Awaitable[None]], allowed: tuple[str, ...]) -> None:
        self.app, self.allowed = app, frozenset(allowed)

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin", b"").decode("latin-1").strip().rstrip("/").lower()
        if not origin:
            await self.app(scope, receive, send)
            return
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        own = origin in (f"http://{host}", f"https://{host}")
        if own or origin in self.allowed:
            await self.app(scope, receive, send if own else self._telling(origin, send))
            return
        if scope.get("method", "GET").upper() in self.SAFE_METHODS:
            await self.app(scope, receive, send)  # the browser keeps the answer from the page (no CORS headers)
            return
        shown = _printable_origin(origin)
        await JSONResponse({"detail": f"a request from the page of another site ({shown}) is refused: start the "
                                      f"server with --allow-origin {shown} to accept it"}, 403,
                           headers={"Connection": "close"})(scope, receive, send)

    @staticmethod
    def _telling(origin: str, send: Callable[[dict[str, Any]], Awaitable[None]]
                 ) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                   (b"access-control-allow-origin", origin.encode("latin-1")),
                                                   (b"vary", b"Origin")]}
            await send(message)
        return with_cors


def _printable_origin(origin: str) -> str:
    """An ``Origin`` header as it may be shown: printable ASCII, at most 100 characters."""
    return "".join(c for c in origin if " " < c < "\x7f")[:100]


class RequestLimit:
    """503 with ``Retry-After`` past ``most`` requests in progress. Counted here, once a request's headers are in,
    so connections still sending theirs (the protocol limits those apart) never take a request's place."""

    def __init__(self, app: Callable[..., Awaitable[None]], most: int) -> None:
        self.app, self.most, self.in_progress = app, most, 0

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.most:
            await JSONResponse({"detail": f"the server is busy: {self.in_progress} requests are in progress (the limit "
                                          f"is {self.most}); retry in a moment"}, 503,
                               headers={"Retry-After": "1", "Connection": "close"})(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1
