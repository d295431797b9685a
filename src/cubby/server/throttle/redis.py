"""`RedisThrottle`: the `Throttle` in the deployment's Redis, shared by every process.

A key's record is a hash (``n``, ``first``, ``until``: `cubby.server.throttle.base.Record`)
at ``thr:NAME:HASH`` (after the cache URL's ``?prefix=``). A failure and a forgiveness are each
one Lua script, so they run atomically on the server: failures from any number of processes at
once are all counted, and the lock is computed from the count they make together. The script
follows `after_failure` / `after_forgive` exactly (the contract tests hold it to them). The
record expires once its window and its lock are both over, so Redis keeps nothing for good.

Times are the callers' wall clocks (``time.time``), passed in: the servers of a deployment must
keep their clocks in step (NTP), or a lock ends early or late by their difference. A throttle
could read Redis's own clock instead, but then its window could not be tested on a clock the
test controls, and a second of skew does not matter to a lock of ten seconds or more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cubby.server.throttle.base import MAX_DOUBLINGS, Policy, ThrottleUnavailable, seconds_left, shared_key

_FAILED = """
local now, free, first_delay = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window, max_delay, max_doublings = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local held = redis.call('HMGET', KEYS[1], 'n', 'first', 'until')
local n, first, locked = tonumber(held[1]) or 0, tonumber(held[2]) or now, tonumber(held[3]) or 0
if ARGV[7] == 'admit' and locked > now then
  return string.format('%.6f', locked - now)
end
if n <= 0 or now - first > window then
  n, first, locked = 0, now, 0
end
n = n + 1
if n >= free then
  locked = now + math.min(max_delay, first_delay * 2 ^ math.min(n - free, max_doublings))
end
redis.call('HSET', KEYS[1], 'n', n, 'first', string.format('%.6f', first), 'until', string.format('%.6f', locked))
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((math.max(first + window, locked) - now) * 1000)))
return '0'
"""
"""`after_failure` at KEYS[1] (or `admitted`, and the seconds left, if ARGV[7] is ``admit``);
ARGV = now, free, first_delay, window, max_delay, MAX_DOUBLINGS, ``admit`` or ``fail``."""

_FORGIVE = """
local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
if not n then return 0 end
if n <= 1 then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'n', n - 1, 'until', '0')
end
return 1
"""
"""`after_forgive` at KEYS[1] (the record's time to live is kept)."""


class RedisThrottle:
    """Throttle ``name``'s records in Redis through ``client`` (`cubby.cache.redis.connect`),
    its keys after ``prefix``."""

    def __init__(
        self, client: Any, name: str, policy: Policy, *, prefix: str = "", clock: Callable[[], float] = time.time,
    ) -> None:
        import redis

        self.client = client
        self.name = name
        self.policy = policy
        self.prefix = prefix
        self.clock = clock
        self.errors = (redis.RedisError, OSError)
        self._failed = client.register_script(_FAILED)
        self._forgive = client.register_script(_FORGIVE)

    def key(self, key: str) -> str:
        return self.prefix + shared_key(self.name, key)

    def retry_after(self, key: str) -> int:
        try:
            until = self.client.hget(self.key(key), "until")
        except self.errors as exc:
            raise ThrottleUnavailable(f"Redis did not answer for throttle {self.name}") from exc
        return 0 if until is None else seconds_left(float(until), self.clock())

    def failed(self, key: str) -> None:
        self.fail(key, "fail")

    def admit(self, key: str) -> int:
        return seconds_left(self.fail(key, "admit"), 0.0)

    def fail(self, key: str, mode: str) -> float:
        """Run the failure script in ``mode`` (``fail`` or ``admit``): the seconds the key was
        still locked for (then nothing was recorded), else 0."""
        p = self.policy
        args = [repr(self.clock()), p.free, repr(p.first_delay), repr(p.window), repr(p.max_delay), MAX_DOUBLINGS, mode]
        try:
            return float(self._failed(keys=[self.key(key)], args=args))
        except self.errors as exc:
            raise ThrottleUnavailable(f"Redis did not record a failure for throttle {self.name}") from exc

    def succeeded(self, key: str) -> None:
        try:
            self.client.delete(self.key(key))
        except self.errors as exc:
            raise ThrottleUnavailable(f"Redis did not clear a key of throttle {self.name}") from exc

    def forgive(self, key: str) -> None:
        try:
            self._forgive(keys=[self.key(key)])
        except self.errors as exc:
            raise ThrottleUnavailable(f"Redis did not forgive a failure for throttle {self.name}") from exc
