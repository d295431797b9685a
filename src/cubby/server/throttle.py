"""`FailureThrottle`: slow down guessing, per key (an account name, a client address).

After ``free`` failures within the window a key is locked for ``first_delay`` seconds, doubled
with every further failure (up to ``max_delay``); a success clears the key. Locked
attempts are refused before any password is hashed, so a guesser costs the server a dict
lookup. Memory is bounded: at most ``max_keys`` keys are kept, the oldest forgotten first (a
forgotten key only gets its free attempts back). State lives in the process: several meta
processes each allow their own ``free`` attempts, which still caps guessing at a few per second.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Record:
    failures: int
    first: float
    locked_until: float


class FailureThrottle:
    def __init__(
        self, *, free: int, first_delay: float = 10.0, window: float = 900.0, max_delay: float = 900.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.first_delay = first_delay
        self.window = window
        self.max_delay = max_delay
        self.max_keys = max_keys
        self.clock = clock
        self._keys: OrderedDict[str, _Record] = OrderedDict()

    def retry_after(self, key: str) -> int:
        """Seconds until ``key`` may try again (0: now)."""
        rec = self._keys.get(key)
        if rec is None:
            return 0
        wait = rec.locked_until - self.clock()
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, key: str) -> None:
        now = self.clock()
        rec = self._keys.pop(key, None)
        if rec is None or now - rec.first > self.window:
            rec = _Record(0, now, 0.0)
        rec.failures += 1
        if rec.failures >= self.free:
            rec.locked_until = now + min(self.max_delay, self.first_delay * 2.0 ** (rec.failures - self.free))
        self._keys[key] = rec
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def succeeded(self, key: str) -> None:
        self._keys.pop(key, None)

    def forgive(self, key: str) -> None:
        """Take back one failure recorded in advance (`failed` before the check, so that
        concurrent guesses cannot all slip past the gate) when the guess proved right. Unlike
        `succeeded` it clears nothing else: a right password for one link must not wipe an
        address's failures on another."""
        rec = self._keys.get(key)
        if rec is None:
            return
        rec.failures -= 1
        # The attempt was let in, so no lock held before its failure was recorded: any lock
        # now is the one that recording set.
        rec.locked_until = 0.0
        if rec.failures <= 0:
            del self._keys[key]
