"""Adaptive batching: concurrent requests share one `predict` call on one inference thread.

A request puts its rows on a queue and awaits a future. One coroutine takes from the
queue: while a batch is in the model, new requests pile up and go together next time.
When the thread is idle and the recent concurrency says more requests are on their
way, it waits at most `max_wait` seconds for them (never when requests come one at a
time, so a lone caller pays no wait). A batch holds at most `max_requests` requests and
`max_rows` rows (a single request larger than that goes alone). Requests, not rows, are
the main limit because a model's predict time grows slowly with rows (a 100-tree forest
takes about as long for 512 rows as for one), so many-row requests batch well too.

The model runs on one worker thread, never on the event loop, so HTTP keeps flowing
while it computes; `ModelRunner.predict_batch` retries a failed batch request by
request, so a request the model cannot handle fails alone.

A batch may mix replayed requests (`contracts.REPLAY_HEADER`) with live ones: each
request keeps its kind, and the predict function is told which parts are replayed so
that each request's rows are counted as its own kind. Likewise it is told which parts
ask for class probabilities, and computes them for those only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from orchard.serving.inputs import Rows
from orchard.serving.model import BatchResult, Prediction, describe

T = TypeVar("T")


class PredictionFailed(Exception):
    """The model raised on this request's rows (HTTP 500: the model failed, not the caller)."""


@dataclass(slots=True)
class _Item:
    rows: Rows
    n: int
    future: asyncio.Future[Prediction]
    replay: bool = False
    proba: bool = False


# parts, their row counts, which parts are replayed and which ask for class
# probabilities (None: none is, none does)
PredictFn = Callable[[list[Rows], list[int], list[bool] | None, list[bool] | None], BatchResult]
BatchObserver = Callable[[BatchResult, int, int], None]


class Batcher:
    """Groups queued requests into batches and runs them on one worker thread."""

    def __init__(
        self,
        predict: PredictFn,
        max_requests: int = 32,
        max_wait: float = 0.002,
        observe: BatchObserver | None = None,
        max_rows: int = 2048,
    ) -> None:
        self.predict = predict
        self.max_requests = max(1, max_requests)
        self.max_rows = max(1, max_rows)
        self.max_wait = max(0.0, max_wait)
        self.observe = observe
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._wakeup: asyncio.Future[None] | None = None
        self._want = 1  # requests to wait for before an idle thread starts a batch
        self._concurrency = 1.0  # smoothed number of requests seen per batch cycle
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="orchard-predict")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="orchard-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(
        self, rows: Rows, n: int, replay: bool = False, proba: bool = False
    ) -> Prediction:
        """The predictions for these rows, once their batch has run (`replay`: a replayed
        request's; `proba`: with class probabilities)."""
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(rows, n, future, replay, proba))
        self._queued_rows += n
        self._wake()
        return await future

    def between_batches(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn` on the inference thread after the batch it is running, if any (work
        that must not delay an answer, and must not run beside the model)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _wake(self) -> None:
        w = self._wakeup
        if (
            w is not None
            and not w.done()
            and (len(self._queue) >= self._want or self._queued_rows >= self.max_rows)
        ):
            w.set_result(None)

    async def _sleep(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self._wakeup = loop.create_future()
        handle = None
        if timeout is not None:
            handle = loop.call_later(timeout, _release, self._wakeup)
        try:
            await self._wakeup
        finally:
            self._wakeup = None
            if handle is not None:
                handle.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._want = 1
                await self._sleep(loop, None)
            # Requests seem to come in groups: give the rest of the group a moment.
            self._want = min(int(self._concurrency + 0.5), self.max_requests)
            if (
                self.max_wait > 0
                and len(self._queue) < self._want
                and self._queued_rows < self.max_rows
            ):
                await self._sleep(loop, self.max_wait)
            batch: list[_Item] = []
            rows = 0
            while self._queue and (
                not batch
                or (len(batch) < self.max_requests and rows + self._queue[0].n <= self.max_rows)
            ):
                item = self._queue.popleft()
                self._queued_rows -= item.n
                if item.future.done():  # the caller went away
                    continue
                batch.append(item)
                rows += item.n
            if not batch:
                continue
            parts = [item.rows for item in batch]
            sizes = [item.n for item in batch]
            replayed = [item.replay for item in batch]
            proba = [item.proba for item in batch]
            try:
                result = await loop.run_in_executor(
                    self._executor, self.predict, parts, sizes,
                    replayed if any(replayed) else None, proba if any(proba) else None,
                )  # fmt: skip
            except Exception as exc:  # the batch machinery itself failed: fail its requests
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(PredictionFailed(describe(exc)))
                continue
            # Everyone who arrived while the model ran belongs to the same wave of callers.
            seen = len(batch) + len(self._queue)
            self._concurrency = 0.7 * self._concurrency + 0.3 * seen
            probabilities = result.probabilities or [None] * len(batch)
            for item, out, p in zip(batch, result.outputs, probabilities, strict=True):
                if item.future.done():
                    continue
                if isinstance(out, BaseException):
                    item.future.set_exception(PredictionFailed(describe(out)))
                elif isinstance(p, BaseException):
                    item.future.set_exception(PredictionFailed(describe(p)))
                else:
                    item.future.set_result(Prediction(out, p))
            if self.observe is not None:
                self.observe(result, rows, len(batch))


def _release(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
