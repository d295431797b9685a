"""`FailureThrottle`: the `Throttle` in this process's memory, the embedded server's.

A locked attempt costs a dict lookup. Memory is bounded: at most ``max_keys`` keys are kept,
the oldest forgotten first (a forgotten key only gets its free attempts back). The state is
this process's alone: where several processes serve logins, each allows its own ``free``
attempts unless the deployment has a shared cache (`cubby.server.throttle`), and then this
throttle stands beside the shared one for when its server cannot be reached
(`cubby.server.throttle.fallback`). A lock makes it safe from the server's request threads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from cubby.server.throttle.base import Policy, Record, admitted, after_failure, after_forgive, seconds_left


class FailureThrottle:
    def __init__(
        self, policy: Policy, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.max_keys = max_keys
        self.clock = clock
        self._keys: OrderedDict[str, Record] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> int:
        with self._lock:
            rec = self._keys.get(key)
        return 0 if rec is None else seconds_left(rec.locked_until, self.clock())

    def failed(self, key: str) -> None:
        with self._lock:
            self._store(key, after_failure(self._keys.pop(key, None), self.clock(), self.policy))

    def admit(self, key: str) -> int:
        with self._lock:
            wait, rec = admitted(self._keys.get(key), self.clock(), self.policy)
            if rec is not None:
                self._keys.pop(key, None)
                self._store(key, rec)
            return wait

    def _store(self, key: str, rec: Record) -> None:
        """Keep ``rec`` as the newest key, forgetting the oldest beyond ``max_keys`` (the lock held)."""
        self._keys[key] = rec
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def forgive(self, key: str) -> None:
        with self._lock:
            rec = self._keys.get(key)
            if rec is None:
                return
            rec = after_forgive(rec)
            if rec.failures <= 0:
                del self._keys[key]
            else:
                self._keys[key] = rec
