"""The hop from the event loop to a worker thread and back, for a request's blocking work.

Why not the loop's ``run_in_executor`` (a ``ThreadPoolExecutor``): on the way out it makes a
concurrent future and a work item and takes the executor's idle semaphore (a Python-level
``Condition``), and on the way back it chains the concurrent future to an asyncio future
through two layers of callbacks. A single-file commit makes one hop, and that machinery was a
few percent of its CPU. Here a job is a tuple on a ``SimpleQueue`` (C), the worker calls the
function, and hands the outcome back with one ``loop.call_soon_threadsafe`` that settles the
asyncio future the request awaits.

The contract, as the executor's: at most ``max_threads`` threads, each started only when a
job finds no idle one (daemon threads, so a stuck job never blocks interpreter exit); the
exception ``fn`` raises is raised in the awaiting coroutine; a job whose awaiting coroutine
was cancelled before a thread took it is skipped, and one already running runs to its end
(a write still invalidates the cache before anyone may read it), its outcome dropped.
`close` lets queued jobs finish, then joins every thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """On the loop: the job's outcome into its future, unless the awaiting side gave up."""
    if fut.cancelled():
        return
    if isinstance(value, StopIteration):  # a future refuses it (it would end a generator)
        error = RuntimeError(f"a job raised StopIteration: {value!r}")
        error.__cause__ = value
        value = error
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class Hop:
    """Worker threads that run jobs for coroutines (`run`)."""

    def __init__(self, max_threads: int, name: str = "cubby-hop") -> None:
        if max_threads < 1:
            raise ValueError("a hop needs at least one thread")
        self.max_threads = max_threads
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        """Threads waiting (or about to wait) in ``_jobs.get`` that no queued job is promised to."""
        self._unpromised = 0
        """Queued jobs that found every thread busy: the next thread to finish takes one."""
        self._threads: list[threading.Thread] = []
        self._closed = False

    @property
    def threads(self) -> int:
        """Threads started so far (they live until `close`)."""
        return len(self._threads)

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a worker thread, awaited here."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._submit((fn, loop, fut))
        return await fut

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the hop is closed: the server is shutting down")
            if self._idle:
                self._idle -= 1  # promised to a thread that waits in `_jobs.get`
                self._jobs.put(job)
            elif len(self._threads) < self.max_threads:
                thread = threading.Thread(
                    target=self._work, args=(job,), name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                thread.start()  # (if it cannot start, the caller gets the error, nothing is queued)
                self._threads.append(thread)
            else:
                self._unpromised += 1  # every thread is busy: the first to finish takes it
                self._jobs.put(job)

    def _work(self, job: _Job | None) -> None:
        while job is not None:
            fn, loop, fut = job
            ok, value = True, None
            if not fut.cancelled():  # else nobody awaits it any more, and it has not started
                try:
                    value = fn()
                except BaseException as exc:  # every failure goes to the awaiting coroutine
                    ok, value = False, exc
            # Counted idle *before* the answer goes back, so that the request's next job,
            # submitted as soon as the loop sees this answer, finds this thread and starts none.
            with self._lock:
                wait = not self._unpromised
                if wait:
                    self._idle += 1
                else:
                    self._unpromised -= 1
                    job = self._jobs.get_nowait()
            if not fut.cancelled():
                try:
                    loop.call_soon_threadsafe(_settle, fut, ok, value)
                except RuntimeError:
                    pass  # the loop is closed: nobody is left to tell
            del fn, loop, fut, value  # hold no references while waiting for the next job
            if wait:
                job = self._jobs.get()

    def close(self) -> None:
        """Refuse new jobs, let queued ones run, and join every thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join()
