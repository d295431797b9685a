"""Skip a cache that just failed, for a moment, so that a dead cache server costs each
request nothing rather than a connect timeout. Only reads skip: an invalidation is always
tried (see `cubby.cache.base`)."""

from __future__ import annotations

import time


class Breaker:
    def __init__(self, pause: float = 1.0) -> None:
        self.pause = pause
        self._until = 0.0

    def allows(self) -> bool:
        return self._until <= time.monotonic()

    def failed(self) -> None:
        self._until = time.monotonic() + self.pause

    def ok(self) -> None:
        self._until = 0.0
