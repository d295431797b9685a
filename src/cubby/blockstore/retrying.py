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

Why a deadline as well as a number of attempts: a store that fails fast (503, a refused
connection) is tried `Backoff.attempts` times within seconds, but one that accepts a request and
never answers (an overloaded gateway; a Ceph cluster whose OSD is full or down, seen here) fails
each attempt only when the store's own timeout runs out. Eight such attempts at boto3's default
60 s kept a PUT, the upload request behind it and a server thread waiting for eight minutes, while
the client gave up after one and blamed its connection to the server. With `Backoff.deadline`, no
attempt starts that could not end by the deadline if it waited out its whole timeout
(`Backoff.timeout`), so a call answers within the deadline, and the server says that its block
storage failed (503, ``object_store_error``) before a client stops waiting for it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from cubby.blockstore.objects import (
    ObjectStore,
    ObjectStoreError,
    SignedPut,
    SignedRead,
    put_in_parts,
    signed_put,
    signed_read,
    stored_size,
)
from cubby.core.hashing import Sha256State

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """How many attempts in all, and the wait before attempt ``n + 1``: uniform in
    ``[0, min(cap, base * 2**n)]``. The defaults ride out a few seconds of outage (the sum of
    the caps is about 12 s) without keeping a caller waiting for minutes."""

    attempts: int = 8
    base: float = 0.05
    cap: float = 4.0
    deadline: float | None = None
    """Seconds a call may take in all, its attempts and waits together (None: no limit)."""
    timeout: float = 0.0
    """The longest one attempt can wait on a store that does not answer (the store's own
    timeout): a retry starts only if it could end by the deadline after waiting that long."""

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        return rng() * min(self.cap, self.base * (2**attempt))

    def next_wait(self, attempt: int, elapsed: float, rng: Callable[[], float]) -> float | None:
        """The wait before attempt ``attempt + 2`` after attempt ``attempt + 1`` (from 0)
        failed ``elapsed`` seconds into the call; None when the call should give up instead."""
        if attempt >= self.attempts - 1:
            return None
        wait = self.delay(attempt, rng)
        if self.deadline is not None and elapsed + wait + self.timeout > self.deadline:
            return None
        return wait


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.backoff = backoff
        self._sleep = sleep
        self._rng = rng
        self._clock = clock

    def _retry_or_raise(self, exc: ObjectStoreError, attempt: int, started: float) -> None:
        """Wait before the next attempt, or raise ``exc`` (final, or out of attempts or time:
        then said in its message, and still retryable for whoever called)."""
        if not exc.retryable:
            raise exc
        elapsed = self._clock() - started
        wait = self.backoff.next_wait(attempt, elapsed, self._rng)
        if wait is None:
            exc.message = f"{exc.message} (gave up after {attempt + 1} attempts in {elapsed:.1f} s)"
            exc.args = (exc.message,)
            raise exc
        self._sleep(wait)

    def _call(self, fn: Callable[[], T]) -> T:
        started = self._clock()
        attempt = 0
        while True:
            try:
                return fn()
            except ObjectStoreError as exc:
                self._retry_or_raise(exc, attempt, started)
            attempt += 1

    def put(self, name: str, data: bytes) -> None:
        self._call(lambda: self.inner.put(name, data))

    def put_parts(
        self, name: str, parts: Iterable[bytes | memoryview], sha256: Mapping[int, Sha256State] | None = None
    ) -> None:
        """`StreamingPut.put_parts`, retried: the parts are taken (not joined) first, so that an
        inner store that must hold the whole object anyway (S3) sends them again on each
        attempt; one that cannot take parts gets them joined, as `put`."""
        pieces = list(parts)
        self._call(lambda: put_in_parts(self.inner, name, pieces, sha256))

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(lambda: self.inner.get(name, offset, length))

    def signed_read(self, name: str, offset: int, length: int) -> SignedRead | None:
        """The inner store's (`SignedReads`): made without a request, so nothing to retry or cache."""
        return signed_read(self.inner, name, offset, length)

    def signed_put(self, name: str, chunks: Sequence[tuple[int, str]]) -> SignedPut | None:
        """The inner store's (`SignedPuts`), retried: the first may probe the server."""
        return self._call(lambda: signed_put(self.inner, name, chunks))

    def stored_size(self, name: str) -> int | None:
        return self._call(lambda: stored_size(self.inner, name))

    def delete(self, name: str) -> None:
        self._call(lambda: self.inner.delete(name))

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        seen: set[str] = set()
        started = self._clock()
        attempt = 0
        while True:
            try:
                for name, size in self.inner.list(prefix):
                    if name not in seen:
                        seen.add(name)
                        yield name, size
                        started = self._clock()  # the deadline is for a stall, not a long listing
                return
            except ObjectStoreError as exc:
                self._retry_or_raise(exc, attempt, started)
            attempt += 1

    def close(self) -> None:
        self.inner.close()
