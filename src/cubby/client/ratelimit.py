"""A token bucket: at most ``rate`` bytes per second on average, in bursts of ``burst``.

Shared by every transfer that goes through one limiter (thread-safe), so that
``--max-upload-rate`` bounds the whole client, not each request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator


class TokenBucket:
    def __init__(self, rate: float, burst: float | None = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate / 4, 64 * 1024))
        self._tokens = self.burst
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def consume(self, n: int) -> None:
        """Block until ``n`` bytes may pass."""
        while n > 0:
            take = min(n, int(self.burst))
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= take:
                    self._tokens -= take
                    n -= take
                    continue
                wait = (take - self._tokens) / self.rate
            self._sleep(wait)

    def paced(self, pieces: Iterable[bytes], piece_size: int = 64 * 1024) -> Iterator[bytes]:
        """Re-yield ``pieces`` in slices, waiting for the bucket before each."""
        for piece in pieces:
            view = memoryview(piece)
            for i in range(0, len(view), piece_size):
                part = view[i : i + piece_size]
                self.consume(len(part))
                yield bytes(part)
