"""A micro-batcher: images from concurrent requests share one forward pass, on one thread that owns the model.

A forward pass of 8 images often costs much less than 8 passes of one (on a 2-core CPU, ResNet18 at 224 px
ran 1.6x as many images per second), so under load the server answers more requests per second by waiting
a few milliseconds for company. Not always, though (the bundled MobileNetV2, at 448 or 640 px, ran fewer images per
second in batches on that CPU), so how many images a pass may take is measured, not assumed
(:func:`fastest_batch_size`). Everything that touches the model (batches, Grad-CAM, which hooks the trunk)
runs on the same single thread, one job at a time: no two passes fight over the cores or see each other's
hooks.

The batcher knows nothing about HTTP or models: it stacks ``[n, ...]`` tensors, calls ``run`` on the batch
in its thread, and hands each request back its own rows of the answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

import torch

__all__ = ["BATCH_CANDIDATES", "BatchStats", "MicroBatcher", "QueueFullError", "fastest_batch_size"]

T = TypeVar("T")

BATCH_CANDIDATES = (1, 2, 4, 8)
"""The batch sizes :func:`fastest_batch_size` tries."""


class QueueFullError(RuntimeError):
    """More images are waiting than the batcher was allowed to queue; the caller should retry later."""


@dataclass
class BatchStats:
    """Counters since start: how much batching actually happened, counted in forward passes (a request larger
    than ``max_batch`` runs in several)."""

    requests: int = 0
    """Jobs answered (a request's images are one job)."""
    images: int = 0
    batches: int = 0
    """Forward passes run."""
    combined_batches: int = 0
    """Forward passes that served more than one request: the ones batching made."""
    largest_batch: int = 0
    """Most images in one forward pass."""
    most_requests_in_batch: int = 0
    """Most requests served by one forward pass."""

    def to_dict(self) -> dict[str, Any]:
        mean = self.images / self.batches if self.batches else 0.0
        return {**asdict(self), "mean_batch_size": mean}


@dataclass
class _Job:
    images: torch.Tensor
    future: asyncio.Future


class MicroBatcher(Generic[T]):
    """Collect images for up to ``max_wait_ms`` (or until ``max_batch``), run them as one batch, answer each caller.

    Args:
        run: ``[B, ...]`` tensor -> ``B`` answers, called on the batcher's single model thread.
        max_batch: most images in one pass; a single request with more runs alone, in passes of ``max_batch``.
        max_wait_ms: how long the first image of a batch waits for others. Under load it rarely waits:
            requests that arrived while the previous batch ran are taken at once.
        max_queue: most images waiting; :meth:`submit` raises :class:`QueueFullError` beyond it.

    Use it from one event loop: ``await start()``, ``await submit(images)``, ``await stop()``.

    Example:
        >>> batcher = MicroBatcher(lambda batch: batch.sum(dim=1).tolist(), max_batch=8)  # doctest: +SKIP
        >>> await batcher.start(); await batcher.submit(torch.ones(2, 3))  # doctest: +SKIP
        [3.0, 3.0]
    """

    def __init__(self, run: Callable[[torch.Tensor], Sequence[T]], *, max_batch: int = 8,
                 max_wait_ms: float = 5.0, max_queue: int = 256) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
        if not isinstance(max_queue, int) or max_queue < max_batch:
            raise ValueError(f"max_queue must be an integer >= max_batch ({max_batch}), got {max_queue!r}")
        self.run = run
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._queued_images = 0

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        """Start the model thread and the collecting task on the running event loop."""
        if self.running:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="multihead-model")
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._collect_and_run(self._queue), name="multihead-batcher")

    async def stop(self) -> None:
        """Stop collecting, fail whatever still waits, and let the model thread finish its current job."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while self._queue is not None and not self._queue.empty():
            self._fail([self._queue.get_nowait()], RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._worker = self._queue = self._executor = None
        self._queued_images = 0

    async def submit(self, images: torch.Tensor) -> list[T]:
        """Queue ``[n, ...]`` images; their ``n`` answers, in order, once their batch has run."""
        if not self.running or self._queue is None:
            raise RuntimeError("the batcher is not running: call start() first (the app's lifespan does)")
        if images.shape[0] == 0:
            return []
        if self._queued_images + images.shape[0] > self.max_queue:
            raise QueueFullError(f"{self._queued_images} images are already waiting (the limit is "
                                 f"{self.max_queue}); retry in a moment")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queued_images += images.shape[0]
        self._queue.put_nowait(_Job(images, future))
        return await future

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` on the model thread, between batches (for work that cannot be batched)."""
        if not self.running or self._executor is None:
            raise RuntimeError("the batcher is not running: call start() first (the app's lifespan does)")
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    # --- the collecting task ------------------------------------------------------------------------
    async def _collect_and_run(self, queue: asyncio.Queue[_Job]) -> None:
        jobs: list[_Job] = []
        waiting: _Job | None = None
        try:
            while True:
                jobs = [waiting or await queue.get()]
                waiting = self._take_ready(queue, jobs)
                if waiting is None and self.max_wait_ms > 0 and self._size(jobs) < self.max_batch:
                    await asyncio.sleep(self.max_wait_ms / 1000)
                    waiting = self._take_ready(queue, jobs)
                self._queued_images -= self._size(jobs)
                live = [job for job in jobs if not job.future.done()]  # a caller may have given up
                if live:
                    await self._run_batch(live)
                jobs = []
        except asyncio.CancelledError:  # stop(): nobody may wait forever on a job this task held
            self._fail([*jobs, *([waiting] if waiting else [])], RuntimeError("the server is shutting down"))
            raise

    def _take_ready(self, queue: asyncio.Queue[_Job], jobs: list[_Job]) -> _Job | None:
        """Move queued jobs into ``jobs`` while they fit; the first that does not is returned for the next batch."""
        while not queue.empty():
            job = queue.get_nowait()
            if self._size(jobs) + job.images.shape[0] > self.max_batch:
                return job
            jobs.append(job)
        return None

    def _run_in_passes(self, batch: torch.Tensor) -> list[T]:
        return [answer for part in batch.split(self.max_batch) for answer in self.run(part)]

    @staticmethod
    def _fail(jobs: list[_Job], error: BaseException) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    @staticmethod
    def _size(jobs: list[_Job]) -> int:
        return sum(job.images.shape[0] for job in jobs)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        batch = jobs[0].images if len(jobs) == 1 else torch.cat([job.images for job in jobs])
        try:
            answers = await self.call(self._run_in_passes, batch)
        except Exception as err:  # every caller of this batch gets the error; the batcher goes on
            self._fail(jobs, err)
            return
        if len(answers) != batch.shape[0]:
            self._fail(jobs, RuntimeError(f"run returned {len(answers)} answers for a batch of {batch.shape[0]}"))
            return
        start = 0
        for job in jobs:
            count = job.images.shape[0]
            if not job.future.done():
                job.future.set_result(list(answers[start:start + count]))
            start += count
        self._count(jobs, batch.shape[0])

    def _count(self, jobs: list[_Job], total: int) -> None:
        """Add the forward passes ``_run_in_passes`` made of these jobs to the counters."""
        stats, ends = self.stats, []
        for job in jobs:
            ends.append((ends[-1] if ends else 0) + job.images.shape[0])
        stats.requests += len(jobs)
        stats.images += total
        for begin in range(0, total, self.max_batch):
            end = min(begin + self.max_batch, total)
            starts = [0, *ends[:-1]]
            served = sum(1 for start, stop in zip(starts, ends) if start < end and stop > begin)
            stats.batches += 1
            stats.combined_batches += served > 1
            stats.largest_batch = max(stats.largest_batch, end - begin)
            stats.most_requests_in_batch = max(stats.most_requests_in_batch, served)


def fastest_batch_size(run: Callable[[torch.Tensor], Any], example: torch.Tensor,
                       candidates: Sequence[int] = BATCH_CANDIDATES, *, repeats: int = 2,
                       margin: float = 0.1) -> tuple[int, dict[int, float]]:
    """The batch size at which ``run`` gets through the most images per second, timed on copies of ``example``.

    Batching is not always faster: on a 2-core CPU ResNet18 at 224 px ran 1.6x as many images per second in
    batches of 8, but the bundled MobileNetV2 at 448 or 640 px ran fewer (docs/serve.md). So the server measures
    instead of assuming. A larger size must beat the best smaller one by ``margin`` to be chosen, since a
    bigger batch costs every request in it some latency.

    Args:
        run: ``[B, ...]`` -> anything; called ``1 + repeats`` times per size (the first call warms up).
        example: one input, ``[1, ...]``.

    Returns:
        ``(chosen size, {size: images per second})``.
    """
    rates: dict[int, float] = {}
    for size in candidates:
        batch = example.expand(size, *example.shape[1:]).contiguous()
        run(batch)  # the first call of a shape allocates, and some backends compile
        seconds = []
        for _ in range(repeats):
            began = time.perf_counter()
            run(batch)
            seconds.append(time.perf_counter() - began)
        rates[size] = size / max(min(seconds), 1e-9)
    chosen = candidates[0]
    for size in candidates[1:]:
        if rates[size] > rates[chosen] * (1 + margin):
            chosen = size
    return chosen, rates
