"""The in-process cache of the embedded server: one dict behind a lock, bounded by count.

Memory: at most ``max_items`` entries (a principal, a head or a stat is a few hundred bytes),
evicted least recently used first. It is correct only for one process: a second process
sharing the database would never see this one's invalidations, so a deployment of several
processes names a Redis or memcached cache instead (`cubby serve --cache`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from cubby.cache.base import LEASE, LEASE_SECONDS, VALUE, VALUE_SECONDS, fenced, new_lease, unfenced


class MemoryCache:
    name = "memory"

    def __init__(self, max_items: int = 100_000) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _live(self, key: str, now: float) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= now:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item[0]

    def _store(self, key: str, raw: bytes, ttl: float, now: float) -> None:
        self._items[key] = (raw, now + ttl)
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def get(self, key: str) -> tuple[bytes | None, str | None]:
        now = time.monotonic()
        with self._lock:
            raw = self._live(key, now)
            if raw is None:
                token = new_lease()
                self._store(key, LEASE + token.encode(), LEASE_SECONDS, now)
                return None, token
        if raw[:1] == VALUE:
            return raw[1:], None
        return None, None

    def peek(self, key: str) -> bytes | None:
        return self.values([key])[0]

    def values(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.monotonic()
        with self._lock:
            raws = [self._live(key, now) for key in keys]
        return [raw[1:] if raw is not None and raw[:1] == VALUE else None for raw in raws]

    def fill(self, key: str, value: bytes, lease: str, ttl: float = VALUE_SECONDS) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._live(key, now) != LEASE + lease.encode():
                return False
            self._store(key, VALUE + value, ttl, now)
            return True

    def put(self, key: str, value: bytes, ttl: float = VALUE_SECONDS) -> None:
        with self._lock:
            self._store(key, VALUE + value, ttl, time.monotonic())

    def invalidate(self, keys: Sequence[str], token: str | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                rest = unfenced(self._live(key, now), token)
                if rest is None:
                    self._items.pop(key, None)
                else:
                    self._items[key] = (rest, self._items[key][1])

    def fence(self, keys: Sequence[str], token: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._store(key, fenced(self._live(key, now), token), LEASE_SECONDS, now)

    def close(self) -> None:
        with self._lock:
            self._items.clear()
