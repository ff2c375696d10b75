"""``multihead serve``: the web page and HTTP API (the ``serve`` extra)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import (
    ModelOption,
    _library_errors,
    _one_of,
)
from .precision import PRECISION_CHOICES, PRECISION_HELP, checked_precision


@_library_errors
def serve(
    model: ModelOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the server, which has no "
                                           "authentication, to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body in MiB (413 above).")] = 32.0,
    max_pixels: Annotated[int, typer.Option(min=1, help="Largest image, width x height, from its header (422 "
                                                        "above).")] = 40_000_000,
    max_batch: Annotated[int | None, typer.Option(min=1, help="Most images in one forward pass, across requests "
                                                            "(default: 1, 2, 4 or 8, the fastest, timed at start).")
                         ] = None,
    batch_wait_ms: Annotated[float, typer.Option(min=0.0, max=1000.0, help="How long the first image of a batch "
                                                                           "waits for others.")] = 5.0,
    allow_origin: Annotated[list[str] | None, typer.Option(
        "--allow-origin", help="An origin (https://app.example) whose pages may POST to the server; repeat for "
                               "several. POSTs from other sites' pages get 403.")] = None,
    precision: Annotated[str, typer.Option(callback=_one_of(*PRECISION_CHOICES), help=PRECISION_HELP)] = "auto",
) -> None:
    """Web page and HTTP API: upload images, see organ, subtype, probabilities and Grad-CAM (docs/serve.md)."""
    from ..inference.config import InferenceConfig
    from ..serve import ServeSettings, run_server

    inference = InferenceConfig(precision=checked_precision(precision, device))
    settings = ServeSettings(max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels,
                             max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                             max_queue=max(ServeSettings.max_queue, max_batch or 0),
                             allowed_origins=tuple(allow_origin or ()))
    run_server(model, host=host, port=port, device=device, settings=settings,  # MissingExtraError: a RuntimeError
               inference=inference)
