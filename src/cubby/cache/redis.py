"""The metadata cache on Redis, for many processes (redis-py).

A lease is ``SET key <marker> NX PX``; a fill is a Lua script that stores the value only if
the key still holds the caller's marker (one round trip, atomic on the server); invalidation
is ``DEL``. Run this Redis without persistence (``--save '' --appendonly no``) or give the
cache its own: a Redis that restarts from a snapshot would bring back values older than
changes acknowledged while it was down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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

_FILL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


def split_prefix(url: str) -> tuple[str, str]:
    """``redis://HOST:PORT/DB?prefix=NAME`` -> (``NAME:``, the URL without it): a prefix lets
    deployments (or test runs) share one Redis."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = "".join(v + ":" for k, v in query if k == "prefix")
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return prefix, urlunsplit(parts._replace(query=rest))


class RedisCache:
    name = "redis"

    def __init__(self, url: str, *, timeout: float = 0.5, breaker: Breaker | None = None) -> None:
        import redis

        self.prefix, url = split_prefix(url)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.client: Any = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._fill = self.client.register_script(_FILL)
        self.breaker = breaker or Breaker()

    def get(self, key: str) -> tuple[bytes | None, str | None]:
        if not self.breaker.allows():
            return None, None
        try:
            key = self.prefix + key
            raw = self.client.get(key)
            if raw is None:
                token = new_lease()
                got = self.client.set(key, LEASE + token.encode(), nx=True, px=int(LEASE_SECONDS * 1000))
                self.breaker.ok()
                return None, (token if got else None)
        except self._errors:
            self.breaker.failed()
            return None, None
        self.breaker.ok()
        return (bytes(raw[1:]), None) if raw[:1] == VALUE else (None, None)

    def fill(self, key: str, value: bytes, lease: str, ttl: float = VALUE_SECONDS) -> bool:
        try:
            return bool(self._fill(keys=[self.prefix + key], args=[LEASE + lease.encode(), VALUE + value, int(ttl * 1000)]))
        except self._errors:
            self.breaker.failed()
            return False

    def put(self, key: str, value: bytes, ttl: float = VALUE_SECONDS) -> None:
        if not self.breaker.allows():
            return
        try:
            self.client.set(self.prefix + key, VALUE + value, px=int(ttl * 1000))
        except self._errors:
            self.breaker.failed()

    def invalidate(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        try:
            self.client.delete(*[self.prefix + k for k in keys])
        except self._errors as exc:
            if is_refused(exc):
                return  # nobody listens: a restarted Redis without persistence is empty
            raise CacheUnavailable("the metadata cache did not confirm an invalidation; retry") from exc

    def close(self) -> None:
        self.client.close()
