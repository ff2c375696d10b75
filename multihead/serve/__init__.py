"""Try the model over HTTP: a JSON API (``/v1/classify``, ``/v1/explain``, ``/v1/model``) and a page at ``/``.

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart): ``pip install 'multihead[serve]'``. This
module imports none of them, so ``import multihead`` and the CLI work without the extra; only
:func:`create_app` and :func:`run_server` need it, and say so in one line when it is missing.

Example:
    >>> from multihead.serve import create_app, ServeSettings  # doctest: +SKIP
    >>> app = create_app("model.safetensors", settings=ServeSettings(max_batch=8))  # an ASGI app
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from .settings import ServeSettings

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["EXTRA_MODULES", "LOOPBACK_NAMES", "MissingExtraError", "ServeSettings", "create_app", "is_loopback",
           "require_extra", "run_server", "server_config"]

EXTRA_MODULES = {"fastapi": ("fastapi",), "uvicorn": ("uvicorn",),
                 "python-multipart": ("python_multipart", "multipart")}
"""Distribution -> the import names it may provide (python-multipart before 0.0.13 had only ``multipart``)."""


class MissingExtraError(RuntimeError):
    """The ``serve`` extra is not installed; the message says how to install it."""


def require_extra() -> None:
    """Raise :class:`MissingExtraError` naming ``pip install 'multihead[serve]'`` unless the extra is installed."""
    missing = [dist for dist, modules in EXTRA_MODULES.items()
               if all(importlib.util.find_spec(module) is None for module in modules)]
    if missing:
        raise MissingExtraError(f"the web server needs the 'serve' extra ({', '.join(missing)} not installed): "
                                "pip install 'multihead[serve]'")


def run_server(model: Any = None, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
               settings: ServeSettings | None = None, inference: Any = None, log_level: str = "info") -> None:
    """Load the model, then serve the API and the page with uvicorn until interrupted.

    Args:
        model: a loaded model, a checkpoint path, or ``None`` for ``$MULTIHEAD_MODEL`` / the bundled model.
        host: the address to listen on; ``0.0.0.0`` exposes the server to the network (it has no
            authentication: mind who can reach it).
        inference: a :class:`multihead.InferenceConfig`; the library's defaults when ``None``.
    """
    _app, config = server_config(model, host=host, port=port, device=device, settings=settings, inference=inference,
                                 log_level=log_level)  # first: it says so in one line when the extra is missing
    import uvicorn

    uvicorn.Server(config).run()


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
"""What a loopback server answers to in the Host header (anything else is refused: DNS rebinding)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to bind) is reachable only from this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_config(model: Any = None, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
                  settings: ServeSettings | None = None, inference: Any = None,
                  log_level: str = "info") -> tuple[Any, Any]:
    """The app and the ``uvicorn.Config`` :func:`run_server` serves: connection limits and deadlines from
    ``settings`` (``max_connections`` requests in progress, and apart from them as many connections still sending
    their headers), and, on a loopback address, the Host header checked against :data:`LOOPBACK_NAMES`."""
    require_extra()
    from dataclasses import replace

    import uvicorn

    from .app import create_app
    from .protocol import guarded_protocol

    settings = settings or ServeSettings()
    if settings.allowed_hosts is None and is_loopback(host):
        settings = replace(settings, allowed_hosts=LOOPBACK_NAMES)
    app = create_app(model, device=device, settings=settings, inference=inference)
    config = uvicorn.Config(  # requests in progress are limited by the app, connections sending headers here
        app, host=host, port=port, log_level=log_level,
        http=guarded_protocol(header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
                              max_pending=settings.max_connections),
        timeout_keep_alive=settings.keep_alive_timeout_s, h11_max_incomplete_event_size=settings.max_header_bytes)
    return app, config


def __getattr__(name: str) -> Any:
    if name == "create_app":  # imported on first use: it needs FastAPI
        require_extra()
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
