"""The lease rules of `cubby.cache.base` over a cache server, written once: Redis and memcached
supply seven primitive operations, and this class turns them into `MetadataCache` with the
failure policy (reads that fail are misses without a lease, and pause the cache for a moment;
an invalidation that finds nobody listening succeeds; any other failed invalidation raises
`CacheUnavailable`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cubby.cache.base import (
    LEASE,
    LEASE_SECONDS,
    VALUE,
    VALUE_SECONDS,
    CacheUnavailable,
    is_refused,
    is_value,
    new_lease,
)
from cubby.cache.breaker import Breaker


class RemoteCache:
    name = "remote"
    errors: tuple[type[BaseException], ...] = (OSError,)
    """What the client library raises when the server fails or cannot be reached."""

    def __init__(self, breaker: Breaker | None = None) -> None:
        self.breaker = breaker or Breaker()

    # -- the primitives a server supplies ---------------------------------------------------
    def read(self, key: str) -> bytes | None:
        raise NotImplementedError

    def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        raise NotImplementedError

    def add(self, key: str, raw: bytes, ttl: float) -> bool:
        """Store ``raw`` only if ``key`` holds nothing; True if stored."""
        raise NotImplementedError

    def swap(self, key: str, expected: bytes, raw: bytes, ttl: float) -> bool:
        """Atomically replace ``expected`` at ``key`` by ``raw``; True if it was there."""
        raise NotImplementedError

    def write(self, key: str, raw: bytes, ttl: float) -> None:
        raise NotImplementedError

    def unfence(self, keys: Sequence[str], token: str | None) -> None:
        """`cubby.cache.base.unfenced` at every key, atomically per key, confirmed by the server."""
        raise NotImplementedError

    def add_fence(self, keys: Sequence[str], token: str, ttl: float) -> None:
        """`cubby.cache.base.fenced` at every key, atomically per key, living ``ttl`` seconds;
        confirmed by the server (raise if any was not stored)."""
        raise NotImplementedError

    # -- MetadataCache ------------------------------------------------------------------------
    def get(self, key: str) -> tuple[bytes | None, str | None]:
        if not self.breaker.allows():
            return None, None
        try:
            raw = self.read(key)
            if raw is None:
                token = new_lease()
                got = self.add(key, LEASE + token.encode(), LEASE_SECONDS)
                self.breaker.ok()
                return None, (token if got else None)
        except self.errors:
            self.breaker.failed()
            return None, None
        self.breaker.ok()
        return (bytes(raw[1:]), None) if is_value(raw) else (None, None)

    def values(self, keys: Sequence[str]) -> list[bytes | None]:
        if not self.breaker.allows():
            return [None] * len(keys)
        try:
            raws = self.read_many(keys)
        except self.errors:
            self.breaker.failed()
            return [None] * len(keys)
        self.breaker.ok()
        return [bytes(raw[1:]) if is_value(raw) else None for raw in raws]

    def fill(self, key: str, value: bytes, lease: str, ttl: float = VALUE_SECONDS) -> bool:
        try:
            return self.swap(key, LEASE + lease.encode(), VALUE + value, ttl)
        except self.errors:
            self.breaker.failed()
            return False

    def put(self, key: str, value: bytes, ttl: float = VALUE_SECONDS) -> None:
        if not self.breaker.allows():
            return
        try:
            self.write(key, VALUE + value, ttl)
        except self.errors:
            self.breaker.failed()

    def invalidate(self, keys: Sequence[str], token: str | None = None) -> None:
        self.confirmed(lambda: self.unfence(keys, token), keys, "an invalidation")

    def fence(self, keys: Sequence[str], token: str) -> None:
        self.confirmed(lambda: self.add_fence(keys, token, LEASE_SECONDS), keys, "a write fence")

    def confirmed(self, op: Callable[[], None], keys: Sequence[str], what: str) -> None:
        """Run a change of ``keys`` that a writer depends on: `CacheUnavailable` unless the
        server confirms it or is down (then it holds nothing, and needs nothing)."""
        if not keys:
            return
        try:
            op()
        except self.errors as exc:
            if is_refused(exc):
                return  # nobody listens: a restarted cache server is empty
            raise CacheUnavailable(f"the metadata cache did not confirm {what}; retry") from exc
