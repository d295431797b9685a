"""A bounded pipeline of tasks on worker threads, results in order.

`cubby put` and the sync engine use it to keep the server busy while the client prepares the
next step: upload windows and groups of commits (`cubby.client.upload`), download batches
(`cubby.client.sync.downloads`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Self, TypeVar

T = TypeVar("T")


class Pipeline:
    """At most ``depth`` tasks running on worker threads while the caller prepares the next;
    results come back in submission order. An error cancels what has not started and is
    raised to the caller."""

    def __init__(self, depth: int) -> None:
        self.depth = max(1, depth)
        self.pool = ThreadPoolExecutor(self.depth)
        self.pending: deque[Future[Any]] = deque()

    def submit(self, fn: Callable[[], T]) -> list[T]:
        """Start ``fn``; returns the results of earlier tasks that had to finish to make room."""
        done = []
        while len(self.pending) >= self.depth:
            done.append(self.pending.popleft().result())
        self.pending.append(self.pool.submit(fn))
        return done

    def drain(self) -> list[Any]:
        done = []
        while self.pending:
            done.append(self.pending.popleft().result())
        return done

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=exc_type is not None)


class Precedence:
    """Lets the work a server is waiting for go before work that only runs ahead of it.

    A put of a tree names files (reads and hashes them) on a thread of its own while the groups
    already named are proven, uploaded and committed. The client runs Python on one thread at
    a time, and the naming of small files wants all of it: beside it, a group's nonces and
    proofs took their turns with files that would not be sent for a second or more, while the
    server waited for that group (in the first third of a put of 10,000 files of 4 KiB it was
    half idle). A thread preparing a request marks it `urgent`; naming calls `defer` between
    files, which waits while any such preparation is under way. Urgent work never waits for
    deferred work, so nothing can wait on itself."""

    def __init__(self) -> None:
        self._urgent = 0
        self._none_urgent = threading.Condition()

    @contextmanager
    def urgent(self) -> Iterator[None]:
        with self._none_urgent:
            self._urgent += 1
        try:
            yield
        finally:
            with self._none_urgent:
                self._urgent -= 1
                if not self._urgent:
                    self._none_urgent.notify_all()

    def defer(self) -> None:
        """Wait while urgent work is under way (at once when none is)."""
        if self._urgent:  # read without the lock: a stale answer costs one file's wait at most
            with self._none_urgent:
                self._none_urgent.wait_for(lambda: not self._urgent)
