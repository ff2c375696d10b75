"""The server's work: the model, its micro-batcher and the decoding threads that every route shares.

Work is split three ways: the event loop only moves bytes; a small thread pool decodes and resizes uploads (and
encodes Grad-CAM PNGs), with progressive JPEGs, whose decoding costs most, on a pool of their own; one model thread,
owned by :class:`~multihead.serve.batching.MicroBatcher`, runs every forward pass.
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
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import torch
from fastapi import HTTPException, Request
from PIL import Image

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
from .settings import ServeSettings

__all__ = ["DISCONNECT_POLL_S", "Service"]

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.05
"""How often a request in progress checks that its client is still there."""
T = TypeVar("T")


class Service:
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
