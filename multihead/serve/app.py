"""The FastAPI application: thin routes over the shared work (:mod:`.service`), limits checked at the edge
(:mod:`.middleware`), and error handlers. Any failure a client can cause is a 4xx whose ``detail`` names the file.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..data.images import ImageError
from ..inference.config import InferenceConfig
from ..model.heads import MultiHeadModel
from .batching import QueueFullError
from .middleware import BodyLimit, HostCheck, OriginCheck, RequestLimit
from .schemas import ClassifyResponse, ErrorResponse, ExplainResponse, Health
from .service import Service
from .settings import ServeSettings

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {  # the page loads nothing from elsewhere; thumbnails are blob: URLs, Grad-CAM maps data: URLs
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "A POST from another site's page (its Origin is not allowed)."},
    413: {"model": ErrorResponse, "description": "The request body is larger than the server's limit."},
    422: {"model": ErrorResponse, "description": "No image, too many images, or a file that is not a readable "
                                                 "image, has too many pixels or scans, or takes too long to decode "
                                                 "(the message names it)."},
    503: {"model": ErrorResponse, "description": "Too many requests in progress, or images waiting or being "
                                                 "decoded; retry after the seconds in Retry-After."},
}
FILES_HELP = "One or more images (JPEG, PNG, BMP, TIFF, GIF, WebP), each as a part named 'files'."


def create_app(model: MultiHeadModel | str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
               settings: ServeSettings | None = None, inference: InferenceConfig | None = None) -> FastAPI:
    """The API and the page for one model, loaded now (so a bad checkpoint fails before a port is bound).

    Args:
        model: a loaded model, a checkpoint path, or ``None`` for ``$MULTIHEAD_MODEL`` / the bundled model.
        device: where the model runs.
        settings: limits and batching (:class:`ServeSettings`); the defaults when ``None``.
        inference: how batches run (precision, backend, ...); the library's defaults, as
            ``multihead classify`` uses, when ``None``. Its ``batch_size`` is ignored: ``settings.max_batch`` rules.

    Example:
        >>> from fastapi.testclient import TestClient  # doctest: +SKIP
        >>> with TestClient(create_app("model.safetensors")) as client:
        ...     results = client.post("/v1/classify", files={"files": open("slide.jpg", "rb")}).json()["results"]
        >>> first = results[0]
        >>> first["organ"]
        'lung_colon'
    """
    service = Service(model, device, settings or ServeSettings(), inference or InferenceConfig())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="multihead",
        version=__version__,
        summary="Organ and subtype of a cancer image from one forward pass, with probabilities and Grad-CAM.",
        description="Research software, not for diagnosis. See docs/serve.md.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=service.settings.max_upload_bytes)
    app.add_middleware(OriginCheck, allowed=service.settings.allowed_origins)
    if service.settings.allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=service.settings.allowed_hosts)
    app.add_middleware(RequestLimit, most=service.settings.max_connections)  # outermost: counted first
    _add_error_handlers(app)

    @app.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_unset=True,
              responses=ERRORS, summary="Organ, subtype and probabilities of each uploaded image")
    async def classify(
        request: Request,
        files: Annotated[list[UploadFile], File(description=FILES_HELP)],
        top_k: Annotated[int, Query(ge=1, le=64, description="Also list the K most probable subtypes "
                                                              "(as `multihead classify --json --top-k K`).")] = 1,
    ) -> Any:
        """Each record is what a line of `multihead classify --json` holds, with `source` the file's name.

        Images from concurrent requests share forward passes. A request with any unreadable image fails
        whole (422) and names every such file.
        """
        uploads = await _read_uploads(files, service.settings.max_files)
        return {"results": await service.unless_disconnected(request, service.classify(uploads, top_k))}

    @app.post("/v1/explain", response_model=ExplainResponse, response_model_exclude_unset=True,
              responses={**ERRORS, 200: {"content": {"image/png": {}}, "description": "JSON, or with "
                                         "format=png one image's figure (as `multihead explain --out`)."}},
              summary="Grad-CAM maps of the router's organ and the head's subtype")
    async def explain_images(
        request: Request,
        files: Annotated[list[UploadFile], File(description=FILES_HELP)],
        output: Annotated[Literal["json", "png"], Query(
            alias="format", description="json: a classification record plus Grad-CAM overlays as PNG data URLs, "
                                        "per file; png: the figure of exactly one image.")] = "json",
    ) -> Any:
        """Classification plus where in the image the router saw its organ and the head its subtype.

        Grad-CAM needs a backward pass per map, one image at a time, so it is slower than classify.
        """
        limit = 1 if output == "png" else service.settings.max_explain_files
        uploads = await _read_uploads(files, limit)
        if output == "png":
            figure = await service.unless_disconnected(request, service.explain_figure(*uploads[0]))
            return Response(figure, media_type="image/png")
        return {"results": await service.unless_disconnected(request, service.explain(uploads))}

    @app.get("/v1/model", summary="The model card: taxonomy, trunk, preprocessing, training and metrics")
    async def model_card() -> dict[str, Any]:
        """Read from the checkpoint's own metadata (as `multihead info`); no split lists or local paths."""
        return service.card

    @app.get("/healthz", response_model=Health, summary="Liveness, the model served and batching counters")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": service.model_summary(), "batching": service.batching()}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _read_uploads(files: list[UploadFile], limit: int) -> list[tuple[str, bytes]]:
    """``(file name, bytes)`` of each upload; 422 when there are none or more than ``limit``."""
    if not files:
        raise HTTPException(422, "no image in the request: send one or more files in the multipart field 'files'")
    if len(files) > limit:
        raise HTTPException(422, f"{len(files)} images in one request, the limit is {limit}: send them in "
                                 "several requests")
    uploads = []
    for index, upload in enumerate(files, start=1):
        name = os.path.basename((upload.filename or "").replace("\\", "/"))[:200] or f"upload-{index}"
        uploads.append((name, await upload.read()))
    return uploads



def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for entry in error.errors():
            where = ".".join(str(part) for part in entry.get("loc", ()) if part != "body")
            if where == "files" and entry.get("type") == "missing":
                kind = request.headers.get("content-type", "none").split(";")[0]
                problems.append(f"no image in the request: send multipart/form-data with one or more files in the "
                                f"field 'files' (got content type {kind})")
            else:
                problems.append(f"{where}: {entry.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(problems)}, 422)

    @app.exception_handler(ImageError)
    async def unreadable_image(_request: Request, error: ImageError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, 422)

    @app.exception_handler(QueueFullError)
    async def busy(_request: Request, error: QueueFullError) -> JSONResponse:
        return JSONResponse({"detail": f"the server is busy: {error}"}, 503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("internal error answering %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(error).__name__}); the server log has the details"},
                            500)
