"""The metadata cache on memcached, for many processes (pymemcache).

A lease is ``add key <marker>`` (stored only if the key is absent); a fill reads the key with
``gets`` and, if it still holds the caller's marker, replaces it with ``cas`` (so a
``delete`` in between, an invalidation, makes the fill fail); invalidation is ``delete``.
memcached keeps nothing across a restart, which is what makes "server down" safe.

URLs: ``memcached://HOST:PORT`` or ``memcached:///path/to/socket`` (a unix socket).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from cubby.cache.base import (
    LEASE,
    LEASE_SECONDS,
    VALUE,
    VALUE_SECONDS,
    CacheUnavailable,
    is_refused,
    new_lease,
)
from cubby.cache.breaker import Breaker


def server_of(url: str) -> Any:
    parts = urlsplit(url)
    if parts.hostname:
        return (parts.hostname, parts.port or 11211)
    return parts.path  # a unix socket


class MemcachedCache:
    name = "memcached"

    def __init__(self, url: str, *, timeout: float = 0.5, breaker: Breaker | None = None) -> None:
        from pymemcache.client.base import PooledClient
        from pymemcache.exceptions import MemcacheError

        self._errors: tuple[type[BaseException], ...] = (MemcacheError, OSError)
        self.client: Any = PooledClient(
            server_of(url), connect_timeout=timeout, timeout=timeout, max_pool_size=64, no_delay=True,
        )
        self.breaker = breaker or Breaker()

    def get(self, key: str) -> tuple[bytes | None, str | None]:
        if not self.breaker.allows():
            return None, None
        try:
            raw = self.client.get(key)
            if raw is None:
                token = new_lease()
                got = self.client.add(key, LEASE + token.encode(), expire=math.ceil(LEASE_SECONDS), noreply=False)
                self.breaker.ok()
                return None, (token if got else None)
        except self._errors:
            self.breaker.failed()
            return None, None
        self.breaker.ok()
        return (bytes(raw[1:]), None) if raw[:1] == VALUE else (None, None)

    def fill(self, key: str, value: bytes, lease: str, ttl: float = VALUE_SECONDS) -> bool:
        try:
            raw, cas = self.client.gets(key)
            if raw != LEASE + lease.encode():
                return False
            return bool(self.client.cas(key, VALUE + value, cas, expire=math.ceil(ttl), noreply=False))
        except self._errors:
            self.breaker.failed()
            return False

    def put(self, key: str, value: bytes, ttl: float = VALUE_SECONDS) -> None:
        if not self.breaker.allows():
            return
        try:
            self.client.set(key, VALUE + value, expire=math.ceil(ttl), noreply=True)
        except self._errors:
            self.breaker.failed()

    def invalidate(self, keys: Sequence[str]) -> None:
        try:
            for key in keys:
                self.client.delete(key, noreply=False)
        except self._errors as exc:
            if is_refused(exc):
                return  # nobody listens: a restarted memcached is empty
            raise CacheUnavailable("the metadata cache did not confirm an invalidation; retry") from exc

    def close(self) -> None:
        self.client.close()
