"""`FallbackThrottle`: a shared throttle, with this process's own beside it for when the shared
one cannot be reached.

**Fail open to the process, not to nothing, and not closed.** When the cache server is down,
cut off or too slow, refusing every login (fail closed) would turn a cache outage, which the
metadata cache itself survives by reading the database, into nobody being able to log in or
open a protected link. Letting every guess through (fail open) would lift the limit for as long
as the outage lasts. So each attempt then counts in the process that serves it
(`FailureThrottle`): guessing stays bounded, at ``free`` attempts per process and window
instead of per deployment, and logins keep working.

So that an outage does not hand out fresh free attempts to a key under attack, the local
throttle records every change all the time (a dict operation), while the answers come from the
shared one whenever it answers: the local one has seen only this process's failures, and may
remember failures that a success in another process has since cleared, so it is the better
guess only when there is no other.

**Bounded waits.** Each shared call gives up after the client's timeout (see
`cubby.server.throttle.opener`), and after a failure a `Breaker` skips the shared store for a
moment, so a dead cache costs the next attempts nothing rather than a timeout each.

**Logged without secrets.** The first failure after a healthy spell, and the recovery, are
each one structured log line naming the cache kind, the throttle, the operation and the
error's type: never the key (it may be an account name or a link's id) nor the error's text.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from cubby.cache.breaker import Breaker
from cubby.server.throttle.base import Throttle, ThrottleUnavailable

T = TypeVar("T")


class SharedHealth:
    """Whether the shared throttle store answers, for every throttle of a process: one breaker
    (one server), and one log line per change between reachable and not."""

    def __init__(self, kind: str, log: logging.Logger, breaker: Breaker | None = None) -> None:
        self.kind = kind
        self.log = log
        self.breaker = breaker or Breaker()
        self.down = False
        self._lock = threading.Lock()

    def call(self, throttle: str, op: str, fn: Callable[[], T]) -> T | None:
        """``fn()``, or None if the store is skipped for now or ``fn`` raised `ThrottleUnavailable`."""
        if not self.breaker.allows():
            return None
        try:
            out = fn()
        except ThrottleUnavailable as exc:
            self.breaker.failed()
            self.went(True, throttle, op, type(exc.__cause__ or exc).__name__)
            return None
        self.breaker.ok()
        if self.down:
            self.went(False, throttle, op, None)
        return out

    def went(self, down: bool, throttle: str, op: str, error: str | None) -> None:
        with self._lock:
            if self.down == down:
                return
            self.down = down
        extra = {"event": "throttle_shared_down" if down else "throttle_shared_up", "cache": self.kind,
                 "throttle": throttle, "op": op}
        if down:
            self.log.warning(
                "shared password throttle unreachable: each process throttles on its own until it answers",
                extra={**extra, "error": error},
            )
        else:
            self.log.info("shared password throttle reachable again", extra=extra)


class FallbackThrottle:
    """``shared``, answered by ``local`` while ``health`` says the shared store fails."""

    def __init__(self, name: str, shared: Throttle, local: Throttle, health: SharedHealth) -> None:
        self.name = name
        self.shared = shared
        self.local = local
        self.health = health

    def retry_after(self, key: str) -> int:
        answer = self.health.call(self.name, "retry_after", lambda: self.shared.retry_after(key))
        return self.local.retry_after(key) if answer is None else answer

    def failed(self, key: str) -> None:
        self.local.failed(key)
        self.health.call(self.name, "failed", lambda: self.shared.failed(key))

    def admit(self, key: str) -> int:
        answer = self.health.call(self.name, "admit", lambda: self.shared.admit(key))
        if answer is None:
            return self.local.admit(key)
        if answer == 0:  # recorded there: record it here too (what was refused, was not)
            self.local.failed(key)
        return answer

    def succeeded(self, key: str) -> None:
        self.local.succeeded(key)
        self.health.call(self.name, "succeeded", lambda: self.shared.succeeded(key))

    def forgive(self, key: str) -> None:
        self.local.forgive(key)
        self.health.call(self.name, "forgive", lambda: self.shared.forgive(key))
