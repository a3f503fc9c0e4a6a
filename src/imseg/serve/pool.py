"""Bounded concurrency for the model: a pool of workers with a waiting queue and timeouts.

At most ``len(workers)`` model calls run at once (each in a thread, off the event loop); at most
``max_queue`` requests wait for a free worker, each for at most ``queue_timeout`` seconds. Going
over either limit raises :class:`Busy` (the app answers 503 with ``Retry-After``). A call that
runs longer than ``run_timeout`` raises :class:`RunTimeout` (504); its worker goes back to the
pool only when the thread really finishes, so a worker is never used by two threads at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Busy(Exception):
    """No worker became free in time, or the waiting queue is full."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RunTimeout(Exception):
    """A model call took longer than the run timeout."""


class WorkerPool:
    """Hands out workers to coroutines; the queue binds lazily to the running event loop."""

    def __init__(self, workers: list[Any], *, max_queue: int, queue_timeout: float, run_timeout: float) -> None:
        if not workers:
            raise ValueError("WorkerPool needs at least one worker")
        self.size = len(workers)
        self.max_queue = int(max_queue)
        self.queue_timeout = float(queue_timeout)
        self.run_timeout = float(run_timeout)
        self._idle: list[Any] = list(workers)  # idle workers not yet put in the current loop's queue
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self.waiting = 0
        self.running = 0
        self.rejected = 0
        self.timeouts = 0

    def _current_queue(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._loop is not loop:  # first use, or a new loop (e.g. a fresh test client)
                old = self._queue
                self._loop, self._queue = loop, asyncio.Queue()
                if old is not None:
                    while not old.empty():
                        self._idle.append(old.get_nowait())
            while self._idle:
                self._queue.put_nowait(self._idle.pop())
            return self._queue

    def _release(self, worker: Any) -> None:
        """Give ``worker`` back (callable from any thread)."""
        with self._lock:
            loop, queue = self._loop, self._queue
        try:
            if loop is None or queue is None or loop.is_closed():
                raise RuntimeError("loop closed")
            loop.call_soon_threadsafe(queue.put_nowait, worker)
        except RuntimeError:
            with self._lock:
                self._idle.append(worker)

    async def run(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(worker)`` in a thread with a free worker, within the queue and run limits."""
        import anyio.to_thread

        queue = self._current_queue()
        if queue.empty() and self.waiting >= self.max_queue:
            self.rejected += 1
            raise Busy(f"the model queue is full ({self.waiting} requests waiting); retry shortly.", 1)
        self.waiting += 1
        try:
            worker = await asyncio.wait_for(queue.get(), timeout=self.queue_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            self.rejected += 1
            raise Busy(
                f"no model worker became free within {self.queue_timeout:g} s; the server is busy, retry shortly.",
                max(1, round(self.queue_timeout)),
            ) from None
        finally:
            self.waiting -= 1

        def call() -> T:
            try:
                return fn(worker)
            finally:
                self.running -= 1
                self._release(worker)

        self.running += 1
        try:
            return await asyncio.wait_for(
                anyio.to_thread.run_sync(call, abandon_on_cancel=True), timeout=self.run_timeout
            )
        except (asyncio.TimeoutError, TimeoutError):
            self.timeouts += 1
            raise RunTimeout(f"the model call took longer than {self.run_timeout:g} s and was abandoned.") from None
