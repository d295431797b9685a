"""How a client learns that its namespaces changed: the seam between sync and notifications.

The sync engine never asks "how" it is woken; it holds a `ChangeWaiter` and calls `wait` with
its cursor (the journal position it has read up to in every namespace it syncs). A waiter
returns as soon as any of those namespaces may have moved past its position, or at the
timeout. Returning early (a spurious wake-up) is always allowed: the engine then reads the
journals and finds nothing new. Returning late is the only failure, and it costs latency,
never correctness, because the engine reads the journals itself after every wake-up.

`PollWaiter` asks the metadata role for the journal heads, backing off while nothing
changes. A push implementation (`cubby.client.notify`) replaces it without the planner or
engine noticing; `open_waiter` picks push when a notification server answers and falls back
to polling while none does.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

from cubby.client.api import ApiClient
from cubby.errors import CubbyError

Cursor = Mapping[int, int]
"""Namespace id -> the last journal id the client has read in it."""


class ChangeWaiter(Protocol):
    """Blocks until the client's namespaces may have changed.

    Contract: ``wait`` returns True when some namespace in ``cursor`` has (or may have) a
    journal entry after the given position, or when the set of namespaces the account can
    see may have changed (a folder shared or unshared); False when ``timeout`` passed with
    no sign of change. It may return True spuriously. It raises `cubby.errors.Unavailable`
    when the server cannot be reached, so the caller can back off. ``close`` wakes any
    blocked ``wait`` (which then returns True) and releases connections; it is idempotent.
    """

    def wait(self, cursor: Cursor, timeout: float) -> bool: ...

    def close(self) -> None: ...


class PollWaiter:
    """Polls the journal heads (`GET /api/v1/account`), backing off from ``min_interval`` to
    ``max_interval`` while nothing changes, with jitter so that many clients do not poll in
    step. The fallback while no notification server answers."""

    def __init__(self, api: ApiClient, *, min_interval: float = 1.0, max_interval: float = 30.0) -> None:
        self._api = api
        self._min = min_interval
        self._max = max_interval
        self._interval = min_interval
        self._closed = threading.Event()

    def _heads(self) -> dict[int, int]:
        account = self._api.account()
        return {int(ns["ns_id"]): int(ns["head"]) for ns in account.get("namespaces", [])}

    def wait(self, cursor: Cursor, timeout: float) -> bool:
        deadline_left = timeout
        while not self._closed.is_set():
            heads = self._heads()
            if set(heads) != set(cursor) or any(heads[ns] > pos for ns, pos in cursor.items() if ns in heads):
                self._interval = self._min
                return True
            pause = min(self._interval * random.uniform(0.8, 1.2), deadline_left)
            if pause <= 0:
                return False
            if self._closed.wait(pause):
                return True
            deadline_left -= pause
            self._interval = min(self._interval * 2, self._max)
        return True

    def close(self) -> None:
        self._closed.set()


def open_waiter(api: ApiClient, report: Callable[[bool, str], None] | None = None) -> ChangeWaiter:
    """Push when the server offers a notification role, polling otherwise.

    The push implementation lives in `cubby.client.notify` and brings its own fallback to
    polling while the notification server does not answer. ``report(ok, detail)``
    (`cubby.client.push_status.PushStatus.report`) hears whether push works, so that a client
    stuck on polling says so.
    """
    try:
        from cubby.client.notify import PushWaiter  # type: ignore[import-not-found]
    except ImportError:
        return PollWaiter(api)
    try:
        return PushWaiter(api, report=report)
    except CubbyError as exc:
        if report is not None:
            report(False, exc.message)
        return PollWaiter(api)
