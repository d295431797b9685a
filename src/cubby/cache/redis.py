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

from cubby.cache.base import FENCE, SEP
from cubby.cache.breaker import Breaker
from cubby.cache.remote import RemoteCache
from cubby.core.urls import take_query
from cubby.errors import BadRequest

_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


_FENCE = """
for _, key in ipairs(KEYS) do
  local held = redis.call('GET', key)
  local at = held and string.find(held, ARGV[3], 1, true)
  local base = at and held or ARGV[1]
  redis.call('SET', key, base .. ARGV[3] .. ARGV[2], 'PX', ARGV[4])
end
return 1
"""
"""`cubby.cache.base.fenced` at each key: ARGV = FENCE, token, SEP, ttl in ms."""
_UNFENCE = """
for _, key in ipairs(KEYS) do
  local held = redis.call('GET', key)
  local at = held and string.find(held, ARGV[3], 1, true)
  if not at then
    redis.call('DEL', key)
  else
    local rest = {}
    for t in string.gmatch(string.sub(held, at + 1), '[^' .. ARGV[3] .. ']+') do
      if t ~= ARGV[2] then table.insert(rest, t) end
    end
    if #rest == 0 then
      redis.call('DEL', key)
    else
      redis.call('SET', key, ARGV[1] .. ARGV[3] .. table.concat(rest, ARGV[3]), 'KEEPTTL')
    end
  end
end
return 1
"""
"""`cubby.cache.base.unfenced` at each key: ARGV = FENCE, token (or ""), SEP."""


def split_prefix(url: str) -> tuple[str, str]:
    """``redis://HOST:PORT/DB?prefix=NAME`` -> (``NAME:``, the URL without it): a prefix lets
    deployments (or test runs) share one Redis."""
    values, rest = take_query(url, "prefix")
    return "".join(v + ":" for v in values if v), rest


def connect(url: str, timeout: float, **options: Any) -> tuple[str, Any]:
    """(key prefix, a redis-py client) for a cache URL, ``redis://HOST:PORT/DB`` or
    ``redis+unix:///path/to/socket?db=N``, either with ``?prefix=NAME``. Every command and
    connection attempt gives up after ``timeout`` seconds: a cache that stopped answering must
    cost a request a bounded delay, not hang it. Shared by everything cubby keeps in the
    deployment's Redis (this cache, `cubby.server.throttle.redis`); ``options`` go to redis-py
    as they are (``retry``, say)."""
    import redis

    if url.startswith("redis+unix://"):  # a unix socket, as redis-py spells it
        url = "unix://" + url.removeprefix("redis+unix://")
    prefix, url = split_prefix(url)
    return prefix, redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, **options)


class RedisCache(RemoteCache):
    name = "redis"

    def __init__(self, url: str, *, timeout: float = 0.5, breaker: Breaker | None = None) -> None:
        import redis

        super().__init__(breaker)
        self.errors = (redis.RedisError, OSError)
        self.prefix, self.client = connect(url, timeout)
        self._swap = self.client.register_script(_SWAP)
        self._fence = self.client.register_script(_FENCE)
        self._unfence = self.client.register_script(_UNFENCE)
        self.refuse_persistence()

    def refuse_persistence(self) -> None:
        """Refuse a Redis configured to keep its data across a restart (snapshots or an
        append-only file): an invalidation that finds the server down succeeds, so a restart
        that brought back older values would serve them after the change was acknowledged.
        A server that is down now, or that does not let us read its configuration (managed
        services often rename CONFIG away), is taken on the operator's word."""
        try:
            save = str(self.client.config_get("save").get("save", ""))
            aof = str(self.client.config_get("appendonly").get("appendonly", "no"))
        except self.errors:
            return
        if save.strip() or aof == "yes":
            raise BadRequest(
                f"the Redis for the metadata cache persists its data (save {save!r}, appendonly {aof}): "
                "run it with --save '' --appendonly no, or give the cache a Redis of its own"
            )

    def read(self, key: str) -> bytes | None:
        return self.client.get(self.prefix + key)  # type: ignore[no-any-return]

    def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return list(self.client.mget([self.prefix + k for k in keys]))

    def add(self, key: str, raw: bytes, ttl: float) -> bool:
        return bool(self.client.set(self.prefix + key, raw, nx=True, px=int(ttl * 1000)))

    def swap(self, key: str, expected: bytes, raw: bytes, ttl: float) -> bool:
        return bool(self._swap(keys=[self.prefix + key], args=[expected, raw, int(ttl * 1000)]))

    def write(self, key: str, raw: bytes, ttl: float) -> None:
        self.client.set(self.prefix + key, raw, px=int(ttl * 1000))

    def unfence(self, keys: Sequence[str], token: str | None) -> None:
        self._unfence(keys=[self.prefix + k for k in keys], args=[FENCE, token or "", SEP])

    def add_fence(self, keys: Sequence[str], token: str, ttl: float) -> None:
        self._fence(keys=[self.prefix + k for k in keys], args=[FENCE, token, SEP, int(ttl * 1000)])

    def close(self) -> None:
        self.client.close()
