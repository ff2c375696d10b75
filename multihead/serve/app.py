"""The FastAPI application: thin routes over the library, one model thread, and limits checked at the edge.

Work is split three ways: the event loop only moves bytes; a small thread pool decodes and resizes uploads
(and encodes Grad-CAM PNGs), with progressive JPEGs, whose decoding costs most, on a pool of their own; one model
thread, owned by :class:`~multihead.serve.batching.MicroBatcher`, runs every forward pass. Any failure a client
can cause is a 4xx whose ``detail`` names the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import torch
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image

from .. import __version__
from ..data.images import ImageError, finish_decoding, is_progressive_jpeg, open_image, pixels_to_decode
from ..evaluation.plots import plot_explanation, pyplot
from ..inference.config import InferenceConfig
from ..inference.explain import Explanation, explain
from ..inference.models import resolve_model
from ..inference.predict import FileResult, Prediction, predict_batch
from ..model.card import model_card_data
from ..model.heads import MultiHeadModel
from ..model.locate import locate_model
from .batching import BATCH_CANDIDATES, MicroBatcher, QueueFullError, fastest_batch_size
from .budget import PixelBudget
from .render import overlay, png_data_url
from .schemas import ClassifyResponse, ErrorResponse, ExplainResponse, Health
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
DISCONNECT_POLL_S = 0.05
"""How often a request in progress checks that its client is still there."""
T = TypeVar("T")
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
    service = _Service(model, device, settings or ServeSettings(), inference or InferenceConfig())

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
    app.add_middleware(_BodyLimit, max_bytes=service.settings.max_upload_bytes)
    app.add_middleware(_OriginCheck, allowed=service.settings.allowed_origins)
    if service.settings.allowed_hosts is not None:
        app.add_middleware(_HostCheck, allowed=service.settings.allowed_hosts)
    app.add_middleware(_RequestLimit, most=service.settings.max_connections)  # outermost: counted first
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


# --- the work -----------------------------------------------------------------------------------------

class _Service:
    """The model, its batcher and the decoding threads: everything the routes share."""

    def __init__(self, model: MultiHeadModel | str | os.PathLike | None, device: str | torch.device,
                 settings: ServeSettings, inference: InferenceConfig) -> None:
        path = None if isinstance(model, MultiHeadModel) else locate_model(model)  # its name is shown on the page
        self.model = resolve_model(model if path is None else path, device=device).eval()
        self.model_file = Path(path).name if path is not None else None
        self.settings = settings
        self.card = {"file": self.model_file, **model_card_data(self.model)}
        self.config = inference
        self.batcher: MicroBatcher[Prediction] = MicroBatcher(
            lambda batch: predict_batch(self.model, batch, self.config),
            max_batch=settings.max_batch or max(BATCH_CANDIDATES), max_wait_ms=settings.batch_wait_ms,
            max_queue=settings.max_queue)
        self.batch_probe: dict[int, float] | None = None
        self.budget = PixelBudget(settings.max_pixels_in_flight)
        self.decoded_images = 0
        self.abandoned_requests = 0
        self.stopped_decodes = 0
        self._pool: ThreadPoolExecutor | None = None
        self._progressive_pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the threads; with ``max_batch=None``, time the batch sizes first (before any request comes)."""
        self._pool = ThreadPoolExecutor(self.settings.decode_threads, thread_name_prefix="multihead-decode")
        self._progressive_pool = ThreadPoolExecutor(max(1, self.settings.decode_threads // 2),
                                                    thread_name_prefix="multihead-decode-progressive")
        await self.batcher.start()
        if self.settings.max_batch is None:
            size = self.model.preprocessing.image_size
            example = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(0))
            chosen, self.batch_probe = await self.batcher.call(fastest_batch_size, self.batcher.run, example)
            self.batcher.max_batch = chosen
            logger.info("batches of up to %d images (images/s by batch size: %s)", chosen,
                        ", ".join(f"{k}: {v:.1f}" for k, v in self.batch_probe.items()))

    async def stop(self) -> None:
        await self.batcher.stop()
        for pool in (self._pool, self._progressive_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._progressive_pool = None

    def model_summary(self) -> dict[str, Any]:
        return {"file": self.model_file, "trunk": self.model.trunk.name,
                "image_size": self.model.preprocessing.image_size, "device": str(self.model.device),
                "inference": asdict(self.config.resolve(self.model.device, self.model))}  # precision as it runs

    def batching(self) -> dict[str, Any]:
        probe = None if self.batch_probe is None else {str(k): v for k, v in self.batch_probe.items()}
        return {"max_batch": self.batcher.max_batch, "batch_wait_ms": self.batcher.max_wait_ms,
                "measured_images_per_second": probe, **self.batcher.stats.to_dict(), **self.budget.to_dict(),
                "decoded_images": self.decoded_images, "abandoned_requests": self.abandoned_requests,
                "stopped_decodes": self.stopped_decodes}

    async def _in_pool(self, function: Callable[..., Any], *args: Any) -> Any:
        if self._pool is None:
            raise RuntimeError("the service is not started (the app's lifespan starts it)")
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def unless_disconnected(self, request: Request, work: Awaitable[T]) -> T:
        """Await ``work``, cancelling it when the client goes away: undecoded images are never decoded and
        queued ones never reach the model (the batcher skips cancelled jobs)."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    self.abandoned_requests += 1
                    raise HTTPException(499, "the client disconnected")  # nobody reads it; the work stops
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _decode_all(self, uploads: list[tuple[str, bytes]]) -> list[torch.Tensor]:
        """Every upload as the model's ``3xSxS`` uint8 input; a failure fails the request, naming every bad file.

        Headers first: the pixels decoding will allocate (JPEGs at a reduced scale, but a progressive JPEG's
        coefficients at full size) are charged against the request's and the server's budgets before any pixel
        is decoded; each image's share is given back as soon as it is resized, and the full-size image is
        dropped then. Decoding has ``decode_timeout_s`` from the request's arrival, and stops as soon as the
        request is over (answered, failed, or its client gone); progressive JPEGs decode on a pool of their own,
        so other images never wait behind them.
        """
        size = self.model.preprocessing.image_size
        limit = self.settings.decode_timeout_s
        started = time.monotonic()
        stop = threading.Event()

        def open_one(name: str, data: bytes) -> Image.Image:
            return open_image(data, name=name, max_pixels=self.settings.max_pixels, reduce_to=size)

        def decode_one(name: str, image: Image.Image) -> torch.Tensor:
            if time.monotonic() - started > limit:
                raise QueueFullError(f"{name} waited {limit:g} s for a decoding thread; retry in a moment")
            try:
                decoded = finish_decoding(image, name=name, reduce_to=size, time_limit=limit, started=started,
                                          stop=stop)
            except ImageError:
                self.stopped_decodes += stop.is_set()
                raise
            tensor = self.model.preprocessing.load(decoded)
            self.decoded_images += 1
            return tensor

        try:
            opened = await self._gather_images([self._in_pool(open_one, name, data) for name, data in uploads])
            costs = [pixels_to_decode(image) for image in opened]
            if sum(costs) > self.settings.max_request_pixels:
                raise HTTPException(422, f"the {len(uploads)} images hold {sum(costs):,} pixels to decode, more than "
                                         f"the limit of {self.settings.max_request_pixels:,} per request: send fewer "
                                         "or smaller images")
            if not self.budget.try_acquire(sum(costs)):
                raise QueueFullError(f"{self.budget.in_use:,} pixels are being decoded (the limit is "
                                     f"{self.budget.limit:,}); retry in a moment")
            if self._pool is None or self._progressive_pool is None:
                self.budget.release(sum(costs))
                raise RuntimeError("the service is not started (the app's lifespan starts it)")
            pending = []
            for (name, _), image, cost in zip(uploads, opened, costs):
                pool = self._progressive_pool if is_progressive_jpeg(image) else self._pool
                future = pool.submit(decode_one, name, image)
                future.add_done_callback(lambda _f, cost=cost: self.budget.release(cost))  # ran, failed or cancelled
                pending.append(asyncio.wrap_future(future))
            del opened  # each image now lives only in its decoding job
            return await self._gather_images(pending)
        finally:
            stop.set()  # the request is over, whatever ended it: none of its images decodes on

    @staticmethod
    async def _gather_images(jobs: list[Awaitable[Any]]) -> list[Any]:
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        problems = [str(outcome) for outcome in outcomes if isinstance(outcome, ImageError)]
        if problems:
            raise HTTPException(422, "; ".join(problems))
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes

    async def classify(self, uploads: list[tuple[str, bytes]], top_k: int = 1) -> list[dict[str, Any]]:
        tensors = await self._decode_all(uploads)
        predictions = await self.batcher.submit(torch.stack(tensors))
        records = []
        for (name, _), prediction in zip(uploads, predictions):
            record = FileResult(name, prediction).to_dict()
            if top_k > 1:
                record["top_k"] = prediction.top_k(top_k)
            records.append(record)
        return records

    async def explain(self, uploads: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        images = await self._decode_all(uploads)  # 3xSxS each: Grad-CAM draws at the model's input size
        records = []
        for (name, _), image in zip(uploads, images):
            explanation: Explanation = await self.batcher.call(explain, image, self.model)
            gradcam = await self._in_pool(_gradcam_images, explanation)
            records.append({**FileResult(name, explanation.prediction).to_dict(), "gradcam": gradcam})
            del explanation  # only the PNGs are kept
        return records

    async def explain_figure(self, name: str, data: bytes) -> bytes:
        image, = await self._decode_all([(name, data)])
        return await self.batcher.call(_figure_png, image, self.model)  # pyplot: one thread only ever draws


def _gradcam_images(explanation: Explanation) -> dict[str, str]:
    image = explanation.image
    return {"layer": explanation.layer, "input": png_data_url(image),
            "organ": png_data_url(overlay(image, explanation.organ_map)),
            "subtype": png_data_url(overlay(image, explanation.subtype_map))}


def _figure_png(image: torch.Tensor, model: MultiHeadModel) -> bytes:
    figure = plot_explanation(explain(image, model))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    pyplot().close(figure)
    return buffer.getvalue()


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


# --- limits and errors ----------------------------------------------------------------------------------

class _BodyLimit:
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


class _HostCheck:
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


class _OriginCheck:
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


class _RequestLimit:
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
