"""The in-process registry of waiting subscribers: who waits on which namespace, and until when.

One `Hub` per notification process holds every subscription of every connection in three
shared structures, so that an idle subscriber costs a few small objects and no CPU:

- ``namespace id -> set of subscriptions``: a commit to a namespace visits exactly the
  subscriptions of that namespace (a folder shared with 10,000 people: 10,000 visits; an
  unrelated connection: none);
- ``user id -> set of subscriptions``: an account change (a folder shared or unshared) reaches
  that user's connections only;
- one heap of deadlines with one event-loop timer armed for the earliest: a long-poll's timeout
  is an entry in the heap, not a timer or task of its own. Entries of subscriptions that ended
  early are skipped lazily when their deadline comes round.

The hub is not thread-safe: it lives on the event loop of its process, and brokers deliver
their messages there.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger("cubby.notify")

# Deadlines that fall due within this many seconds of each other are handled by one timer
# callback, so that 100,000 long-polls spread over minutes do not arm a timer per expiry.
TIMER_GRANULARITY = 0.25


@dataclass(frozen=True, slots=True)
class Wake:
    """Why a subscription was woken: namespaces that moved (ns id -> head), the account's
    namespaces changed, or its deadline passed. One Wake may be handed to many subscriptions:
    receivers must not modify it."""

    heads: dict[int, int] = field(default_factory=dict)
    account_changed: bool = False
    timed_out: bool = False


Deliver = Callable[["Subscription", Wake], None]
"""Called on the event loop when a subscription wakes; must not block (a long-poll resolves a
future, a WebSocket queues a message for the shared sender)."""


class Subscription:
    """One connection's interest: a cursor (ns id -> last journal id it has seen).

    A one-shot subscription (long-poll) is removed from the hub when it is first delivered to.
    A lasting one (WebSocket) stays; the hub advances its cursor to each head it delivers, so a
    repeated or stale message does not wake it twice.
    """

    __slots__ = ("__weakref__", "active", "cursor", "deliver", "oneshot", "timed", "user_id")

    def __init__(self, user_id: int, cursor: dict[int, int], deliver: Deliver, *, oneshot: bool) -> None:
        self.user_id = user_id
        self.cursor = cursor
        self.deliver = deliver
        self.oneshot = oneshot
        self.active = False
        self.timed = 0
        """Sequence number of this subscription's live heap entry (0: none)."""


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._by_ns: dict[int, set[Subscription]] = {}
        self._by_user: dict[int, set[Subscription]] = {}
        self._heap: list[tuple[float, int, Subscription]] = []
        self._seq = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self.count = 0
        """Active subscriptions."""
        self._stale = 0
        """Heap entries whose subscription ended before its deadline."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # -- registry ------------------------------------------------------------------------------
    def add(self, sub: Subscription, *, timeout: float | None = None) -> None:
        """Register ``sub`` under each namespace of its cursor and its user; with ``timeout``,
        deliver ``Wake(timed_out=True)`` after that many seconds unless woken before."""
        if sub.active:
            raise ValueError("subscription already registered")
        sub.active = True
        self.count += 1
        for ns in sub.cursor:
            self._by_ns.setdefault(ns, set()).add(sub)
        self._by_user.setdefault(sub.user_id, set()).add(sub)
        if timeout is not None:
            sub.timed = next(self._seq)
            heapq.heappush(self._heap, (self.loop.time() + timeout, sub.timed, sub))
            self._arm()

    def remove(self, sub: Subscription) -> None:
        """Forget ``sub``; idempotent. Its heap entry, if any, is skipped when it falls due, and
        the heap is compacted once more than half of it is such entries: a namespace whose
        10,000 long-polls are all woken by every commit must not pile up entries (and the
        connections they reference) for the length of a timeout."""
        if not sub.active:
            return
        sub.active = False
        self.count -= 1
        if sub.timed:
            sub.timed = 0
            self._stale += 1
            if self._stale > 1024 and self._stale * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e[2].timed == e[1]]
                heapq.heapify(self._heap)
                self._stale = 0
        for ns in sub.cursor:
            subs = self._by_ns.get(ns)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_ns[ns]
        users = self._by_user.get(sub.user_id)
        if users is not None:
            users.discard(sub)
            if not users:
                del self._by_user[sub.user_id]

    def narrow(self, sub: Subscription, keep: Callable[[int], bool]) -> list[int]:
        """Drop the namespaces of a registered lasting subscription that ``keep`` refuses (an
        account lost access to them) and return them; a subscription left with none is removed.
        Unregistered subscriptions are left alone (nothing to drop)."""
        if not sub.active:
            return []
        dropped = [ns for ns in sub.cursor if not keep(ns)]
        if dropped:
            self.remove(sub)
            for ns in dropped:
                del sub.cursor[ns]
            if sub.cursor:
                self.add(sub)
        return dropped

    def namespaces(self) -> list[int]:
        """Namespaces somebody waits on (what a resynchronisation has to re-read)."""
        return list(self._by_ns)

    def subscribers(self, ns_id: int) -> int:
        return len(self._by_ns.get(ns_id, ()))

    # -- events --------------------------------------------------------------------------------
    def advance(self, ns_id: int, head: int) -> int:
        """Namespace ``ns_id`` has reached journal id ``head``: wake its subscriptions whose
        cursor is behind. Returns how many woke."""
        subs = self._by_ns.get(ns_id)
        if not subs:
            return 0
        woken = [s for s in subs if head > s.cursor[ns_id]]
        # One Wake for all of them, so a front end can encode its message once per commit.
        wake = Wake(heads={ns_id: head})
        for s in woken:
            if s.oneshot:
                self.remove(s)
            else:
                s.cursor[ns_id] = head
            self._deliver(s, wake)
        return len(woken)

    def advance_many(self, heads: Iterable[tuple[int, int]]) -> int:
        return sum(self.advance(ns, head) for ns, head in heads)

    def account_changed(self, user_id: int) -> int:
        """The namespaces ``user_id`` can reach changed: wake all their subscriptions."""
        subs = list(self._by_user.get(user_id, ()))
        wake = Wake(account_changed=True)
        for s in subs:
            if s.oneshot:
                self.remove(s)
            self._deliver(s, wake)
        return len(subs)

    def _deliver(self, sub: Subscription, wake: Wake) -> None:
        try:
            sub.deliver(sub, wake)
        except Exception:  # one broken connection must not stop the fan-out to the others
            log.exception("delivering a notification failed")

    # -- the shared timer ------------------------------------------------------------------------
    def _arm(self) -> None:
        if not self._heap:
            return
        first = self._heap[0][0]
        if first + TIMER_GRANULARITY < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = first + TIMER_GRANULARITY
            self._timer = self.loop.call_at(self._timer_at, self._expire)

    def _expire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        now = self.loop.time()
        wake = Wake(timed_out=True)
        while self._heap and self._heap[0][0] <= now + TIMER_GRANULARITY:
            _, seq, sub = heapq.heappop(self._heap)
            if sub.timed != seq:  # it ended (or was registered again) before this deadline
                self._stale -= 1
                continue
            sub.timed = 0
            if sub.oneshot:
                self.remove(sub)
            self._deliver(sub, wake)
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
