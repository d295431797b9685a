"""`MemcachedThrottle`: the `Throttle` in the deployment's memcached, shared by every process.

A key's record (`cubby.server.throttle.base.Record`, encoded as ``failures first until``) is
one memcached item at ``thr:NAME:HASH``. memcached cannot read an item's time to live, so the
unlock time is part of the value. A change is optimistic: read the item with its CAS token
(``gets``), apply the pure transition (`after_failure`, `after_forgive`), and write it back
only if nobody changed it meanwhile (``cas``), or create it only if it is still absent
(``add``); a write that lost the race reads again. So failures from any number of processes
at once are all counted. After `ATTEMPTS` lost races in a row the change is given up as
`ThrottleUnavailable` (the caller then counts it in its own process: see
`cubby.server.throttle.fallback`). The item expires once its window and its lock are both over.

Times are the callers' wall clocks (``time.time``): the servers of a deployment must keep their
clocks in step (NTP), or a lock ends early or late by their difference. memcached may evict an
item under memory pressure (its LRU), which gives that key its free attempts back: size the
cache so that it holds its working set, as it must for the metadata anyway.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from cubby.server.throttle.base import (
    Policy,
    Record,
    ThrottleUnavailable,
    admitted,
    after_failure,
    after_forgive,
    seconds_left,
    shared_key,
)

ATTEMPTS = 64
"""Lost CAS races on one key in a row before a change is given up (each one means another
process's change of that key went through, so the key is being changed 64 times meanwhile)."""


class MemcachedThrottle:
    """Throttle ``name``'s records in memcached through ``client`` (`cubby.cache.memcached.connect`)."""

    def __init__(self, client: Any, name: str, policy: Policy, *, clock: Callable[[], float] = time.time) -> None:
        from pymemcache.exceptions import MemcacheError

        self.client = client
        self.name = name
        self.policy = policy
        self.clock = clock
        self.errors = (MemcacheError, OSError)

    def key(self, key: str) -> str:
        return shared_key(self.name, key)

    def retry_after(self, key: str) -> int:
        try:
            raw = self.client.get(self.key(key))
        except self.errors as exc:
            raise ThrottleUnavailable(f"memcached did not answer for throttle {self.name}") from exc
        return 0 if raw is None else seconds_left(Record.decode(raw).locked_until, self.clock())

    def failed(self, key: str) -> None:
        self.change(key, lambda rec, now: after_failure(rec, now, self.policy))

    def admit(self, key: str) -> int:
        wait = 0

        def step(rec: Record | None, now: float) -> Record | None:
            nonlocal wait
            wait, new = admitted(rec, now, self.policy)
            return new

        self.change(key, step)
        return wait

    def succeeded(self, key: str) -> None:
        try:
            self.client.delete(self.key(key), noreply=False)
        except self.errors as exc:
            raise ThrottleUnavailable(f"memcached did not clear a key of throttle {self.name}") from exc

    def forgive(self, key: str) -> None:
        # A record forgiven to no failures is kept, not deleted: deleting only if unchanged
        # would take a CAS delete as well, and `after_failure` starts a new window on it anyway.
        self.change(key, lambda rec, now: None if rec is None else after_forgive(rec))

    def change(self, key: str, step: Callable[[Record | None, float], Record | None]) -> None:
        """Replace ``key``'s record (None: it has none) by ``step(record, now)`` atomically (see
        the module docstring); a step that answers None leaves the key alone."""
        item = self.key(key)
        try:
            for _ in range(ATTEMPTS):
                raw, cas = self.client.gets(item)
                now = self.clock()
                rec = step(None if raw is None else Record.decode(raw), now)
                if rec is None:
                    return
                expire = max(1, math.ceil(rec.lifetime(now, self.policy)))
                if raw is None:
                    if self.client.add(item, rec.encode(), expire=expire, noreply=False):
                        return
                elif self.client.cas(item, rec.encode(), cas, expire=expire, noreply=False):
                    return
        except self.errors as exc:
            raise ThrottleUnavailable(f"memcached did not change a key of throttle {self.name}") from exc
        raise ThrottleUnavailable(f"a key of throttle {self.name} kept changing under {ATTEMPTS} tries")
