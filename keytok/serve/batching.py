"""Micro-batching: the requests that arrive together share one model forward.

Every job that touches the index or the model runs on one worker thread, so the model sees one batch at a
time and the index's lazily loaded parts are never loaded twice. Jobs carry a *group*: jobs of one group
(say, searches of one system with one fusion) can run as one call, e.g. one ``search_batch`` over all their
queries, which encodes them in one forward. The worker takes the first waiting job, then gathers more for
at most ``wait_ms`` or until ``max_batch`` texts, runs each group as one call, and hands every caller its
own result. While a forward runs, new requests queue up and form the next batch, so the busier the server,
the larger its batches; with ``max_batch=1`` every request gets a forward of its own.

A call that fails is retried job by job, so one bad request in a batch fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchStats", "Batcher"]

#: runs the jobs of one group together: their payloads in, one result (or exception) per payload out
GroupRunner = Callable[[Sequence[Any]], Sequence[Any]]


@dataclass
class _Job:
    group: Hashable
    run: GroupRunner
    payload: Any
    size: int
    future: asyncio.Future


@dataclass
class BatchStats:
    """What the batcher has done since it started."""

    jobs: int = 0
    calls: int = 0  # group calls (a forward each, for jobs that need the model)
    texts: int = 0
    largest: int = 0  # most texts in one call
    sizes: dict[int, int] = field(default_factory=dict)  # texts per call -> how many calls

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the mean texts per call."""
        return {
            "jobs": self.jobs,
            "calls": self.calls,
            "texts": self.texts,
            "largest": self.largest,
            "mean_texts_per_call": self.texts / self.calls if self.calls else 0.0,
        }


class Batcher:
    """Runs jobs on one worker thread, those that arrive within ``wait_ms`` of each other in one call per group;
    ``after()`` runs on that thread after each call."""

    def __init__(
        self, max_batch: int = 32, wait_ms: float = 5.0, after: Callable[[], None] | None = None
    ) -> None:
        self.max_batch = max(1, int(max_batch))
        self.after = after  # run on the worker thread after each call (say, handing memory back)
        self.wait_s = max(0.0, float(wait_ms)) / 1000.0
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._held: _Job | None = None  # a job that did not fit the last batch: it opens the next one

    async def start(self) -> None:
        """Start the worker (in the running event loop)."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="keytok-serve")
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Stop the worker; waiting callers get a cancellation."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def run_alone(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the worker thread, outside any batch (start-up work, one-off reads)."""
        assert self._executor is not None, "Batcher.start() first"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def submit(self, group: Hashable, run: GroupRunner, payload: Any, size: int = 1) -> Any:
        """Queue ``payload`` (``size`` texts) to run with the other jobs of ``group``; its result, or its exception."""
        assert self._queue is not None, "Batcher.start() first"
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(group, run, payload, max(1, size), future))
        return await future

    async def _gather(self) -> list[_Job]:
        assert self._queue is not None
        first = self._held if self._held is not None else await self._queue.get()
        self._held = None
        batch, texts = [first], first.size
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while texts < self.max_batch:
            try:
                if self._queue.empty():
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    job = await asyncio.wait_for(self._queue.get(), left)
                else:
                    job = self._queue.get_nowait()
            except (TimeoutError, asyncio.QueueEmpty):
                break
            if texts + job.size > self.max_batch:
                self._held = job
                break
            batch.append(job)
            texts += job.size
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            groups: dict[Hashable, list[_Job]] = {}
            for job in batch:
                groups.setdefault(job.group, []).append(job)
            for jobs in groups.values():
                jobs = [j for j in jobs if not j.future.done()]  # callers that went away
                if jobs:
                    await loop.run_in_executor(self._executor, self._run_group, jobs)

    def _run_group(self, jobs: list[_Job]) -> None:
        """On the worker thread: one call for the group, job by job if it fails; results to the callers."""
        size = sum(j.size for j in jobs)
        s = self.stats
        s.jobs += len(jobs)
        s.calls += 1
        s.texts += size
        s.largest = max(s.largest, size)
        s.sizes[size] = s.sizes.get(size, 0) + 1
        self._call(jobs)
        if self.after is not None:
            self.after()

    def _call(self, jobs: list[_Job]) -> None:
        try:
            results = list(jobs[0].run([j.payload for j in jobs]))
        except Exception as exc:  # handed to the callers, never lost
            if len(jobs) > 1:
                for job in jobs:
                    self._call([job])
                return
            results = [exc]
        for job, result in zip(jobs, results, strict=True):
            _settle(job.future, result)


def _settle(future: asyncio.Future, result: Any) -> None:
    """Hand ``result`` to the caller waiting on ``future`` (from the worker thread, via its loop)."""

    def settle() -> None:
        if future.done():  # the caller went away
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    future.get_loop().call_soon_threadsafe(settle)
