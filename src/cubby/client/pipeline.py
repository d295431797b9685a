"""A bounded pipeline of tasks on worker threads, results in order.

`cubby put` and the sync engine use it to keep the server busy while the client prepares the
next step: upload windows and groups of commits (`cubby.client.upload`), download batches
(`cubby.client.sync.downloads`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
