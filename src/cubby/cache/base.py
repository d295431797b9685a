"""The metadata cache's contract: values, leases and invalidation (after Facebook's memcache
leases, as Dropbox ran a modified memcache in front of its metadata database).

Every key holds either a value or a *lease marker*. The rules, which every implementation
follows and `tests/cache/test_contract.py` checks on each:

- `get` on a hit returns the value. On a miss it tries to place a lease marker (an atomic
  add: memcached ``add``, Redis ``SET NX``); the caller that placed it gets the lease token,
  any other caller gets ``(None, None)`` and reads the database without storing anything.
- A reader that holds a lease reads the database *after* taking it, then calls `fill`: the
  value is stored only if the key still holds that caller's own marker (memcached
  ``gets``/``cas``, a Redis Lua script, a lock in memory).
- `invalidate` deletes keys, markers included. A writer calls it after its database commit
  and before it acknowledges, so a reader that read the database before the commit finds its
  marker gone and cannot put the older value back; a reader whose lease was taken after the
  invalidation read the database after the commit. Only a key another writer has fenced
  and not yet invalidated stays, fenced by that writer alone (see `fence`).
- Values are bytes that never hold `SEP` (0xFF): every value cubby stores is UTF-8 (JSON, or a
  head and JSON), where that byte cannot occur; it marks a fenced key.
- `put` stores a value that can never be wrong (keyed by something immutable, such as a
  namespace head, or holding what it must be checked against), without a lease.
- `values` reads several keys in one round trip without taking leases (a reader that then
  misses goes on with `get`, or reads the database and `put`s); a lease marker or a fence is
  no value.
- `fence` puts a marker that is nobody's lease on keys a writer is about to change, *before*
  its database commit: until the writer's invalidation removes it (or it expires, after
  `LEASE_SECONDS`), readers read the database and nobody fills, and a lease taken before it
  is void. So a writer killed between its commit and its invalidation leaves no old value
  behind for longer than that. The marker names every writer that fenced the key (its
  ``token``, one per write) and an invalidation removes only its own writer's name: the key
  stays fenced until the last of them is gone, so one writer's invalidation cannot lift the
  fence of another whose commit is still to come (two commits to one namespace at once).

Failures: `get` and `fill` never raise (an unreachable cache is a miss without a lease, and
the request reads the database: slower, still correct). `invalidate` raises
`CacheUnavailable` when it cannot be sure the keys are gone; see `CachedStore` for what a
writer then does. A cache that is *down* (connection refused) holds nothing: memcached and a
Redis without persistence restart empty, so an invalidation that finds nobody listening has
nothing to delete and succeeds.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Protocol, TypeGuard

from cubby.core.urls import masked
from cubby.errors import Unavailable

LEASE_SECONDS = 10.0
"""How long a lease marker lives: a reader that died holding one blocks filling for this long
(other readers still read the database meanwhile)."""
VALUE_SECONDS = 3600.0
"""Every value expires eventually: a last bound on anything the rules above did not catch."""

VALUE = b"v"
LEASE = b"l"
"""First byte of what a key holds: a value, or a lease marker followed by its token."""
FENCE = LEASE + b"fence"
"""A writers' marker (`MetadataCache.fence`): a lease no reader holds (tokens are hex),
followed by each fencing writer's token after `SEP`."""
SEP = b"\xff"
"""Before each writer's token on a fenced key. No value holds it (values are UTF-8 JSON), so a
key whose bytes hold it is fenced, whatever comes before (memcached appends tokens in place)."""


def fenced(raw: bytes | None, token: str) -> bytes:
    """What a key holding ``raw`` holds once writer ``token`` fenced it: the fence, with the
    tokens of the writers that fenced it before and have not invalidated it yet."""
    held = raw.split(SEP)[1:] if raw is not None and SEP in raw else []
    return SEP.join([FENCE, *held, token.encode()])


def unfenced(raw: bytes | None, token: str | None) -> bytes | None:
    """What a key holding ``raw`` holds once writer ``token`` (None: none) invalidated it:
    None (delete it) unless other writers' tokens are on it, whose fence then stays."""
    if raw is None or SEP not in raw:
        return None
    rest = [t for t in raw.split(SEP)[1:] if t and t != (token or "").encode()]
    return SEP.join([FENCE, *rest]) if rest else None


def is_value(raw: bytes | None) -> TypeGuard[bytes]:
    """Whether a key's bytes are a value (not a lease marker, not fenced)."""
    return raw is not None and raw[:1] == VALUE and SEP not in raw


class CacheUnavailable(Unavailable):
    """The cache could not confirm an invalidation: the change is committed but was not
    acknowledged, as if the reply had been lost; the client retries or re-reads."""

    code = "cache_unavailable"


class MetadataCache(Protocol):
    """A key-value cache with leases (the module docstring is the contract)."""

    name: str
    """``memory``, ``redis`` or ``memcached``: the label of the cache metrics."""

    def get(self, key: str) -> tuple[bytes | None, str | None]:
        """``(value, None)`` on a hit; ``(None, token)`` on a miss where this caller got the
        lease; ``(None, None)`` when another caller holds it or the cache is unreachable."""
        ...

    def values(self, keys: Sequence[str]) -> list[bytes | None]:
        """The value at each of ``keys`` (None for a miss or a lease marker), in one round
        trip; no lease is taken, and an unreachable cache answers all None."""
        ...

    def fill(self, key: str, value: bytes, lease: str, ttl: float = VALUE_SECONDS) -> bool:
        """Store ``value`` if the key still holds the lease ``lease``; True if it was stored."""
        ...

    def put(self, key: str, value: bytes, ttl: float = VALUE_SECONDS) -> None:
        """Store a value that cannot go stale (no lease). Failures are ignored."""
        ...

    def invalidate(self, keys: Sequence[str], token: str | None = None) -> None:
        """Delete ``keys`` and any lease markers on them, and writer ``token``'s fence: a key
        that other writers fenced stays fenced by them (`unfenced`). Raise `CacheUnavailable`
        if that cannot be confirmed."""
        ...

    def fence(self, keys: Sequence[str], token: str) -> None:
        """Fence ``keys`` for writer ``token`` for `LEASE_SECONDS`, over whatever they hold and
        beside other writers' fences (`fenced`); raise `CacheUnavailable` if that cannot be
        confirmed (a cache that is down needs none)."""
        ...

    def close(self) -> None: ...


class LocalCache(MetadataCache, Protocol):
    """A cache in this process's memory, whose hits cost no I/O: the server answers a request
    whose reads are all such hits on its event loop, without a hop to a thread
    (`CachedStore.hits_only`)."""

    def peek(self, key: str) -> bytes | None:
        """The value at ``key`` on a hit; None on a miss or a lease marker (and no lease is
        taken: the caller goes on to read the usual way, with `get`)."""
        ...


def new_lease() -> str:
    return secrets.token_hex(8)


def digest(*parts: object) -> str:
    """A short fixed-length key part for free text (paths): memcached keys are at most 250
    bytes without spaces or control characters."""
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        h.update(repr(p).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def is_refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says nobody listens at the cache's address: the
    server is down, and so holds nothing."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ConnectionRefusedError, FileNotFoundError)):
            return True
        if "refused" in str(seen).lower() or "no such file" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def open_cache(url: str) -> MetadataCache | None:
    """The cache named by ``url``: ``memory``, ``redis://HOST:PORT/DB``,
    ``redis+unix:///path/to/socket?db=N``, ``memcached://HOST:PORT`` or
    ``memcached:///path/to/socket``; None for ``none``."""
    if url in ("none", "off", ""):
        return None
    if url == "memory":
        from cubby.cache.memory import MemoryCache

        return MemoryCache()
    if url.startswith(("redis://", "redis+unix://")):
        from cubby.cache.redis import RedisCache

        return RedisCache(url)
    if url.startswith("memcached://"):
        from cubby.cache.memcached import MemcachedCache

        return MemcachedCache(url)
    from cubby.errors import BadRequest

    raise BadRequest(f"unknown cache {masked(url)!r}: use memory, none, redis://HOST:PORT/DB or memcached://HOST:PORT")
