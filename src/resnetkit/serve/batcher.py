"""Dynamic batching: images from concurrent requests are gathered into one forward pass, up to `max_batch` images
or `max_delay_s` after the first one arrived, from a bounded queue. The forward pass runs on one worker thread, off
the event loop, so health checks and new requests are answered while the model computes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch


class QueueFull(Exception):
    """More images waiting than the queue holds: the caller answers 503 with Retry-After."""


@dataclass
class Answer:
    """One image's output row, how long it waited for its batch and how long that batch's forward pass took."""

    row: torch.Tensor
    queue_s: float
    forward_s: float


@dataclass
class _Item:
    image: torch.Tensor  # uint8 (3, S, S), or float32 (3, size, size) already normalised (OIP's FP32 input)
    future: asyncio.Future[Answer]
    queued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """`await submit(images)` -> one row of `run`'s output per image. `run` takes a uint8 batch (N, 3, S, S) and
    returns (N, ...) on the CPU; it is called on one thread, one batch at a time. `observe(batch_size, wait_s,
    forward_s)` is told about every batch (metrics)."""

    def __init__(
        self,
        run: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        observe: Callable[[int, float, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_queue must be at least 1, max_delay_s at least 0")
        self.run, self.max_batch, self.max_delay_s, self.max_queue = run, max_batch, max_delay_s, max_queue
        self.observe = observe or (lambda n, wait, fwd: None)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resnetkit-forward")
        self.task: asyncio.Task[None] | None = None
        self.in_flight = 0  # images taken from the queue whose batch has not finished
        self._held: list[_Item] = []  # an item of another kind than the batch being gathered: the next batch's first

    @property
    def depth(self) -> int:
        return self.queue.qsize() + len(self._held)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        while self.depth or self.in_flight:
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, images: list[torch.Tensor]) -> list[Answer]:
        if self.queue.qsize() + len(images) > self.max_queue:
            raise QueueFull(f"{self.queue.qsize()} images are waiting (the queue holds {self.max_queue})")
        loop = asyncio.get_running_loop()
        items = [_Item(image, loop.create_future()) for image in images]
        for item in items:
            self.queue.put_nowait(item)
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _gather(self) -> list[_Item]:
        """Up to max_batch items of one kind (dtype and shape: uint8 images and OIP's float32 tensors never share
        a batch), waiting at most max_delay_s after the first; an item of another kind starts the next batch."""
        batch = [self._held.pop() if self._held else await self.queue.get()]
        kind = (batch[0].image.dtype, batch[0].image.shape)
        deadline = time.perf_counter() + self.max_delay_s
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            if left <= 0 and self.queue.empty():
                break
            try:
                item = self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            if (item.image.dtype, item.image.shape) != kind:
                self._held.append(item)
                break
            batch.append(item)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            self.in_flight = len(batch)
            start = time.perf_counter()
            wait = start - min(item.queued for item in batch)
            try:
                out = await loop.run_in_executor(self.executor, self.run, torch.stack([i.image for i in batch]))
            except Exception as e:  # noqa: BLE001  a failed batch fails its requests, never the service
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
            else:
                forward = time.perf_counter() - start
                for row, item in zip(out, batch, strict=True):
                    if not item.future.done():  # a request that timed out has given up on its future
                        item.future.set_result(Answer(row, start - item.queued, forward))
            finally:
                self.in_flight = 0
            self.observe(len(batch), wait, time.perf_counter() - start)
