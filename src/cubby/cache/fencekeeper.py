"""`FenceKeeper`: a slow write's fences are renewed until it ends, so they cannot expire first.

Why. A writer fences the keys it is about to change before its database commit, and the fence
lives `cubby.cache.base.LEASE_SECONDS` (10 s) unless its invalidation removes it sooner. A
write that takes longer than that (a lock wait, a stalled database) would outlive its fence:

1. the fence expires while the transaction is still open;
2. a reader misses, takes a lease, reads the *old* state and fills it (its lease is intact);
3. the writer commits and is killed before its invalidation.

The old value would then stay until the next write to that namespace or `VALUE_SECONDS`: a
read older than an acknowledged change (the change was not acknowledged by this writer, but
a retry of it is, by the rule that every answer comes after an invalidation of everything a
process could not invalidate, and that retry ran in *another* process).

So a write's fences are renewed every ``every`` seconds while it runs (a third of the fence's
life: two renewals may fail before it expires). Renewing is `MetadataCache.fence` again with
the write's own token: a token twice on a key is harmless, and the fence's time to live starts
anew. A value filled meanwhile cannot exist: the key held the fence all along. When the write
ends, renewal stops before its invalidation; a killed process renews nothing, so its fences
expire at most ``LEASE_SECONDS`` after it died, which is after its transaction ended (the
database rolls back a dead connection's transaction or has committed it). Left: a process
that is paused, not dead, in the middle of its COMMIT for longer than a fence's life.

One thread per `CachedStore` (started with its first write), asleep unless a write has been
running longer than ``every``: a fast write registers and unregisters under a lock, nothing more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from cubby.cache.base import LEASE_SECONDS, CacheUnavailable

log = logging.getLogger("cubby.cache")


@dataclass
class _Write:
    keys: list[str]
    token: str
    renew_at: float
    running: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while its fences are renewed, and taken by the write's end: no renewal of a write
    runs after it ended (its fence would linger the fence's life after the invalidation)."""


class FenceKeeper:
    """Renews the fences of writes that run longer than ``every`` seconds (see module)."""

    def __init__(
        self,
        fence: Callable[[Sequence[str], str], None],
        every: float = LEASE_SECONDS / 3,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        """``background``: renew on a thread of this keeper's own; False, only when the
        owner calls `renew_due` (a test driving its own clock)."""
        self.fence = fence
        self.every = every
        self.clock = clock
        self.background = background
        self._writes: dict[int, _Write] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextmanager
    def holding(self, keys: Sequence[str], token: str) -> Iterator[None]:
        """Around a write whose fences on ``keys`` (writer ``token``) were just placed."""
        write = _Write(list(keys), token, self.clock() + self.every)
        with self._lock:
            self._writes[id(write)] = write
            if self._thread is None and self.background and not self._closed:
                self._thread = threading.Thread(target=self._run, name="cubby-fence-keeper", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with write.lock:
                write.running = False
            with self._lock:
                self._writes.pop(id(write), None)

    def renew_due(self) -> int:
        """Renew every running write whose time came; the number renewed."""
        now = self.clock()
        with self._lock:
            due = [w for w in self._writes.values() if w.renew_at <= now]
        renewed = 0
        for write in due:
            with write.lock:
                if not write.running or write.renew_at > self.clock():
                    continue  # ended, or renewed meanwhile by another caller
                try:
                    self.fence(write.keys, write.token)
                    renewed += 1
                except CacheUnavailable as exc:
                    log.warning("renewing a slow write's cache fence failed", extra={"keys": len(write.keys), "error": str(exc)})
                write.renew_at = self.clock() + self.every
        return renewed

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                soonest = min((w.renew_at for w in self._writes.values()), default=self.clock() + self.every)
                self._wake.wait(max(0.0, min(self.every, soonest - self.clock())))
                if self._closed:
                    return
            self.renew_due()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)


__all__ = ["FenceKeeper"]
