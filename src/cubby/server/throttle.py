"""Failure throttling: a token bucket per key, for guesses (link passwords) that must stay slow.

Each key (a link, a client address) starts with ``burst`` attempts and earns one more every
``refill_seconds``, up to ``burst``. An attempt takes a token *before* the expensive check
runs (so that 64 concurrent guesses cannot all pass the gate before the first failure is
counted) and gives it back when the guess was right. An empty bucket answers with the seconds
until its next token, which the server sends as ``Retry-After``.

Memory is bounded: at most ``max_keys`` buckets are kept, the least recently used dropped
first (about 150 bytes each, so the default 100,000 keys cost ~15 MB at worst). Dropping a
bucket forgives its key, which only an attacker with more than ``max_keys`` addresses gains
from; the per-link bucket still holds them. Not thread-safe: the server calls it from the
event loop only.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable


class FailureThrottle:
    __slots__ = ("_buckets", "_clock", "burst", "max_keys", "refill_seconds")

    def __init__(
        self, burst: int, refill_seconds: float, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """key -> (tokens, at): the tokens the key had at time ``at``."""

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) / self.refill_seconds)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again (0 when it may now)."""
        tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= 1 else (1 - tokens) * self.refill_seconds

    def take(self, key: str) -> None:
        """Spend one attempt of ``key`` (callers check `wait` first)."""
        now = self._clock()
        self._buckets[key] = (self._tokens(key, now) - 1, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def give_back(self, key: str) -> None:
        """Return the attempt a right guess took."""
        if key in self._buckets:
            now = self._clock()
            self._buckets[key] = (min(float(self.burst), self._tokens(key, now) + 1), now)


def address_key(address: str) -> str:
    """The throttling key of a client address: the address itself for IPv4, its /64 for IPv6
    (one host usually holds a whole /64, so per-address keys there would cost it nothing)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


__all__ = ["FailureThrottle", "address_key"]
