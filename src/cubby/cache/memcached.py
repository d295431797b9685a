"""The metadata cache on memcached, for many processes (pymemcache).

A lease is ``add key <marker>`` (stored only if the key is absent); a fill reads the key with
``gets`` and, if it still holds the caller's marker, replaces it with ``cas`` (so a
``delete`` in between, an invalidation, makes the fill fail); a writer's fence appends its
token to the key (meta ``ms`` in append mode, pipelined), and its invalidation deletes the key
or writes back the other writers' tokens, compared by CAS (`MemcachedCache.unfence`).
memcached keeps nothing across a restart, which is what makes "server down" safe.

URLs: ``memcached://HOST:PORT`` or ``memcached:///path/to/socket`` (a unix socket).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from cubby.cache.base import FENCE, LEASE_SECONDS, SEP, unfenced
from cubby.cache.breaker import Breaker
from cubby.cache.remote import RemoteCache

ATTEMPTS = 20
"""Tries of a fence or an invalidation of one key that other clients keep changing."""
ALONE_KEPT = 10_000
"""At most this many (writer, key) fences are remembered with their CAS (`add_fence`)."""


def server_of(url: str) -> Any:
    parts = urlsplit(url)
    if parts.hostname:
        return (parts.hostname, parts.port or 11211)
    return parts.path  # a unix socket


def connect(url: str, timeout: float) -> Any:
    """A pymemcache client for ``url`` (a pool of connections, one per thread that talks at
    once), whose connects and commands give up after ``timeout`` seconds. Shared by everything
    cubby keeps in the deployment's memcached (this cache, `cubby.server.throttle.memcached`)."""
    from pymemcache.client.base import PooledClient

    return PooledClient(server_of(url), connect_timeout=timeout, timeout=timeout, max_pool_size=64, no_delay=True)


def _fence_answers(answer: bytes, count: int) -> list[tuple[bytes, bytes]] | None:
    """(bytes held, CAS) per key from the answer to `MemcachedCache.add_fence`'s batch: per
    key ``NS`` (one of append and add was not stored) then ``VA <len> c<cas>`` and the bytes;
    None if the answer is anything else (then the batch is sent again)."""
    out = []
    at = 0
    for _ in range(count):
        if not answer.startswith(b"NS\r\nVA ", at):
            return None
        head_end = answer.index(b"\r\n", at + 4)
        size, *flags = answer[at + 7 : head_end].split()
        cas = next((f[1:] for f in flags if f.startswith(b"c")), None)
        start = head_end + 2
        data = answer[start : start + int(size)]
        if cas is None or len(data) != int(size):
            return None
        out.append((data, cas))
        at = start + int(size) + 2
    return out if at == len(answer) else None


class MemcachedCache(RemoteCache):
    name = "memcached"

    def __init__(self, url: str, *, timeout: float = 0.5, breaker: Breaker | None = None) -> None:
        from pymemcache.exceptions import MemcacheError

        super().__init__(breaker)
        self.errors = (MemcacheError, OSError)
        self._alone: dict[tuple[str, str], bytes] = {}
        """(writer token, key) -> the CAS of a key that holds that writer's fence alone."""
        self._lock = threading.Lock()
        self.client: Any = connect(url, timeout)

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

    def unfence(self, keys: Sequence[str], token: str | None) -> None:
        """Per key: read it with its CAS, then delete it or write back the other writers'
        fence only if it did not change meanwhile (meta ``md``/classic ``cas``), else again."""
        from pymemcache.exceptions import MemcacheError

        for key in keys:
            with self._lock:
                mine = self._alone.pop((token, key), None) if token else None
            # The fence was ours alone: delete it, unless it changed since (then as below).
            if mine is not None and self.client.raw_command(b"md %s C%s" % (key.encode(), mine), b"\r\n") in (
                b"HD", b"NF",
            ):
                continue
            for _ in range(ATTEMPTS):
                raw, cas = self.client.gets(key)
                if raw is None:
                    break
                rest = unfenced(raw, token)
                if rest is None:
                    answer = self.client.raw_command(b"md %s C%s" % (key.encode(), cas), b"\r\n")
                    if answer in (b"HD", b"NF"):
                        break
                    if answer != b"EX":
                        raise MemcacheError(f"delete of {key}: {answer!r}")
                elif self.client.cas(key, rest, cas, expire=math.ceil(LEASE_SECONDS), noreply=False) is not False:
                    break  # stored, or gone
            else:
                raise MemcacheError(f"{key} kept changing during its invalidation")

    def add_fence(self, keys: Sequence[str], token: str, ttl: float) -> None:
        """One round trip for all keys (meta commands, pipelined): per key, append the token
        (the key exists: a value, a lease or another writer's fence) or else add the whole
        fence, then set the key's time to live and read it back with its CAS. Exactly one of
        the first two is stored; if neither was (the key appeared or went in between), all
        keys are fenced again (a token twice on a key is harmless). A key that holds this
        writer's fence alone is remembered with its CAS: its invalidation is then one
        conditional delete (`unfence`), the read before it needed only if the key changed."""
        from pymemcache.exceptions import MemcacheError

        tail = SEP + token.encode()
        whole = FENCE + tail
        secs = math.ceil(ttl)
        batch = b"".join(
            b"ms %s %d MA q\r\n%s\r\nms %s %d ME T%d q\r\n%s\r\nmg %s T%d c v q\r\n"
            % (k, len(tail), tail, k, len(whole), secs, whole, k, secs)
            for k in (key.encode() for key in keys)
        ) + b"mn"
        for _ in range(ATTEMPTS):
            held = _fence_answers(self.client.raw_command(batch, b"MN\r\n"), len(keys))
            if held is not None:
                with self._lock:
                    if len(self._alone) > ALONE_KEPT:
                        self._alone.clear()
                    for key, (raw, cas) in zip(keys, held):
                        if raw == whole:
                            self._alone[(token, key)] = cas
                return
        raise MemcacheError(f"could not fence {list(keys)}")

    def close(self) -> None:
        self.client.close()
