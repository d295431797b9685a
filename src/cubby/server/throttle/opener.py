"""`Throttles`: where a server's throttles keep their state, chosen once from the cache URL.

- ``memory`` or ``none`` (the embedded server, and ``cubby serve --workers N`` without
  ``--cache``, which runs its workers with ``none``: `cubby.server.workers.for_workers`): each
  process counts on its own (`FailureThrottle`). One process is the whole deployment there,
  except under ``--workers N``, where a key gets ``free`` attempts in each of the N workers
  (the kernel hands connections to whichever worker accepts first, so a guesser meets all of
  them): at most N times the free attempts per window, and each worker locks on its own.
- ``redis://...`` / ``redis+unix://...`` and ``memcached://...``: the deployment's shared cache,
  which every metadata process already reaches (`RedisThrottle`, `MemcachedThrottle`), each
  behind a `FallbackThrottle` for when it cannot be reached. The throttle opens its own client
  (`cubby.cache.redis.connect`, `cubby.cache.memcached.connect`), with a short timeout and no
  retries: a login waits at most `TIMEOUT` per call on a dead cache, and then not at all while
  the breaker is open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from cubby.server.throttle.base import Policy, Throttle
from cubby.server.throttle.fallback import FallbackThrottle, SharedHealth
from cubby.server.throttle.memory import FailureThrottle

TIMEOUT = 0.5
"""Seconds a shared call may take (connect, or wait for an answer) before it counts as failed."""

SharedMaker = Callable[[str, Policy], Throttle]
"""Makes throttle ``name``'s shared state with its policy."""


@dataclass
class Throttles:
    """Makes each of a server's throttles: in-process, or shared behind a fallback."""

    kind: str = "memory"
    """``memory``, ``redis`` or ``memcached``: where the state lives."""
    shared: SharedMaker | None = None
    health: SharedHealth | None = None
    closers: list[Callable[[], object]] = field(default_factory=list)

    def make(self, name: str, policy: Policy) -> Throttle:
        """Throttle ``name`` (unique per server: it names the shared keys) with ``policy``."""
        local = FailureThrottle(policy)
        if self.shared is None or self.health is None:
            return local
        return FallbackThrottle(name, self.shared(name, policy), local, self.health)

    def close(self) -> None:
        for fn in self.closers:
            fn()


def open_throttles(cache_url: str, log: logging.Logger, *, timeout: float = TIMEOUT) -> Throttles:
    """The throttles for a deployment whose metadata cache is ``cache_url`` (`cubby.cache.base.open_cache`
    names the forms; an unknown one was refused there already, and stays in-process here)."""
    if cache_url.startswith(("redis://", "redis+unix://")):
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        from cubby.cache.redis import connect
        from cubby.server.throttle.redis import RedisThrottle

        prefix, client = connect(cache_url, timeout, retry=Retry(NoBackoff(), 0))
        return Throttles(
            "redis", lambda name, policy: RedisThrottle(client, name, policy, prefix=prefix),
            SharedHealth("redis", log), [client.close],
        )
    if cache_url.startswith("memcached://"):
        from cubby.cache.memcached import connect as connect_memcached
        from cubby.server.throttle.memcached import MemcachedThrottle

        mc = connect_memcached(cache_url, timeout)
        return Throttles(
            "memcached", lambda name, policy: MemcachedThrottle(mc, name, policy),
            SharedHealth("memcached", log), [mc.close],
        )
    return Throttles()
