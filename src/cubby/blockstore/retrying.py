"""Retries as a wrapper: `RetryingObjectStore(inner)` is an `ObjectStore` that retries the
inner store's transient faults with capped exponential backoff and full jitter.

Behaviour by wrapping, as restic's backend/retry does: the S3 store itself makes each call once
and says, through ``ObjectStoreError.retryable``, whether the fault may pass (a dropped
connection, 500, 503, SlowDown); this wrapper alone decides how often and how long to wait.
Full jitter (a uniform wait between 0 and the capped exponential step) is what AWS recommends
so that many threads or processes hit by one outage do not come back in lockstep.

Why every method may be retried: `put` is safe to repeat because putting the same bytes under
the same name is harmless (objects are immutable, so a PUT that landed before its answer was
lost is simply overwritten by the same bytes); `put_parts` takes its parts once, before the
first attempt, so that each attempt sends them all again; `get`, `delete` and `list` have no
effect to repeat. A retried `list` starts the listing again and skips the names it already yielded, so
each name still comes out once; that costs a set of the names yielded so far.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from cubby.blockstore.objects import ObjectStore, ObjectStoreError, put_in_parts

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """How many attempts in all, and the wait before attempt ``n + 1``: uniform in
    ``[0, min(cap, base * 2**n)]``. The defaults ride out a few seconds of outage (the sum of
    the caps is about 12 s) without keeping a caller waiting for minutes."""

    attempts: int = 8
    base: float = 0.05
    cap: float = 4.0

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        return rng() * min(self.cap, self.base * (2**attempt))


class RetryingObjectStore:
    """An `ObjectStore` that retries ``inner``'s retryable `ObjectStoreError`s (see the module
    docstring). ``sleep`` and ``rng`` are passed in so tests need not wait."""

    def __init__(
        self,
        inner: ObjectStore,
        backoff: Backoff = Backoff(),
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.inner = inner
        self.backoff = backoff
        self._sleep = sleep
        self._rng = rng

    def _call(self, fn: Callable[[], T]) -> T:
        for attempt in range(self.backoff.attempts):
            try:
                return fn()
            except ObjectStoreError as exc:
                if not exc.retryable or attempt == self.backoff.attempts - 1:
                    raise
                self._sleep(self.backoff.delay(attempt, self._rng))
        raise AssertionError("unreachable")  # the loop returns or raises

    def put(self, name: str, data: bytes) -> None:
        self._call(lambda: self.inner.put(name, data))

    def put_parts(self, name: str, parts: Iterable[bytes | memoryview]) -> None:
        """`StreamingPut.put_parts`, retried: the parts are taken (not joined) first, so that an
        inner store that must hold the whole object anyway (S3) sends them again on each
        attempt; one that cannot take parts gets them joined, as `put`."""
        pieces = list(parts)
        self._call(lambda: put_in_parts(self.inner, name, pieces))

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(lambda: self.inner.get(name, offset, length))

    def delete(self, name: str) -> None:
        self._call(lambda: self.inner.delete(name))

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        seen: set[str] = set()
        for attempt in range(self.backoff.attempts):
            try:
                for name, size in self.inner.list(prefix):
                    if name not in seen:
                        seen.add(name)
                        yield name, size
                return
            except ObjectStoreError as exc:
                if not exc.retryable or attempt == self.backoff.attempts - 1:
                    raise
                self._sleep(self.backoff.delay(attempt, self._rng))

    def close(self) -> None:
        self.inner.close()
