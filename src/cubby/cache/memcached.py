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

from cubby.cache.breaker import Breaker
from cubby.cache.remote import RemoteCache


def server_of(url: str) -> Any:
    parts = urlsplit(url)
    if parts.hostname:
        return (parts.hostname, parts.port or 11211)
    return parts.path  # a unix socket


class MemcachedCache(RemoteCache):
    name = "memcached"

    def __init__(self, url: str, *, timeout: float = 0.5, breaker: Breaker | None = None) -> None:
        from pymemcache.client.base import PooledClient
        from pymemcache.exceptions import MemcacheError

        super().__init__(breaker)
        self.errors = (MemcacheError, OSError)
        self.client: Any = PooledClient(
            server_of(url), connect_timeout=timeout, timeout=timeout, max_pool_size=64, no_delay=True,
        )

    def read(self, key: str) -> bytes | None:
        return self.client.get(key)  # type: ignore[no-any-return]

    def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found = self.client.get_many(keys)  # one "get k1 k2 ..." command
        return [found.get(key) for key in keys]

    def add(self, key: str, raw: bytes, ttl: float) -> bool:
        return bool(self.client.add(key, raw, expire=math.ceil(ttl), noreply=False))

    def swap(self, key: str, expected: bytes, raw: bytes, ttl: float) -> bool:
        held, cas = self.client.gets(key)
        return held == expected and bool(self.client.cas(key, raw, cas, expire=math.ceil(ttl), noreply=False))

    def write(self, key: str, raw: bytes, ttl: float) -> None:
        self.client.set(key, raw, expire=math.ceil(ttl), noreply=True)

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.client.delete(key, noreply=False)

    def cover(self, keys: Sequence[str], raw: bytes, ttl: float) -> None:
        from pymemcache.exceptions import MemcacheError

        failed = self.client.set_many(dict.fromkeys(keys, raw), expire=math.ceil(ttl), noreply=False)
        if failed:
            raise MemcacheError(f"not stored: {failed}")

    def close(self) -> None:
        self.client.close()
