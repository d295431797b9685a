"""How many bytes of request bodies one server process holds in memory at once, all requests
together, and who makes room when they are too many.

Why. Each route caps its own body, but not how many bodies arrive together. One user holding
240 connections from six addresses (each under its per-address cap), each sending 900 KB of a
1 MiB body and then nothing, had the server hold 216 MB; forty uploads each sending most of a
4 MiB chunk frame, 140 MB. So the bodies a route holds (`cubby.server.bodies.read_capped`'s
JSON, an upload's frames until they are stored) are counted against a `BodyBudget`: a
piece that would pass it waits for room, and is refused with 503 (retry later) if none comes.

A budget alone would hand the server to whoever fills it first: a few dozen connections that
send most of a body and then stall would hold it for ever, and every honest request after
them would be refused. So, as the connection gate does with connections that owe a request
(`cubby.server.gate`), a request short of room makes it by closing the oldest bodies that
are too slow: older than the grace (``cubby serve --header-timeout``, the time headers may
take) and received at less than `MIN_RATE` on average, while it was the client's turn. A
client that sends its body at a reasonable rate is always served; one that trickles keeps its
place only while nobody needs it. Time the server spends storing a body's frames, or waiting
for room, is not held against it (`Holder.busy`).

A body is closed by aborting its connection (`allow_abort`: the front's guard puts the abort
in the request's scope); the route then sees the client gone and gives its bytes back. Event
loop only: no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from cubby.errors import Unavailable

MIN_RATE = 16 * 1024
"""Bytes per second a body must average, after the grace, to keep its room when another
request needs it: 128 kbit/s, under any honest link."""
WAIT = 10.0
"""Seconds a piece waits for room before its request is refused with 503."""

_ABORT = "cubby.abort"
"""Scope key: closes the request's connection (`allow_abort`)."""
_BUDGET = "cubby.body_budget"
"""Scope key: the process's budget for bodies held whole (`BodyBudget.lend`, `lent`)."""


def allow_abort(scope: MutableMapping[str, Any], abort: Callable[[], None]) -> None:
    """Let a budget close the connection of the request of ``scope`` (`cubby.server.guard`)."""
    scope[_ABORT] = abort


class Holder:
    """One request's share of a budget: what it holds, what it has received since it started
    (its rate), and whether it is the server's turn (``busy``: not judged slow meanwhile)."""

    __slots__ = ("abort", "busy", "closed", "held", "received", "started", "waited")

    def __init__(self, abort: Callable[[], None] | None, now: float) -> None:
        self.abort = abort
        self.started = now
        self.held = 0
        self.received = 0
        self.busy = False
        self.closed = False
        self.waited = 0.0
        """Seconds of the server's turn so far (not counted in the rate)."""

    def slow(self, now: float, grace: float, min_rate: float) -> bool:
        """Has the client had ``grace`` seconds, and sent less than ``min_rate`` on average?"""
        client_time = now - self.started - self.waited
        return not self.busy and client_time >= grace and self.received < min_rate * client_time


class BodyBudget:
    """Bytes of request bodies held at once, held to ``limit`` (see the module docstring)."""

    def __init__(
        self, limit: int, *, grace: float = 10.0, min_rate: float = MIN_RATE, wait: float = WAIT,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.limit = limit
        self.grace = grace
        self.min_rate = min_rate
        self.wait = wait
        self.held = 0
        self._holders: dict[Holder, None] = {}  # in the order they started: oldest first
        self._freed = asyncio.Event()
        self._clock = clock

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def lend(self, scope: MutableMapping[str, Any]) -> None:
        """Let the request of ``scope`` draw on this budget (`lent`; `cubby.server.front.Front`)."""
        scope[_BUDGET] = self

    @contextlib.contextmanager
    def holding(self, scope: MutableMapping[str, Any]) -> Iterator[Holder]:
        """A share for the request of ``scope``, given back whole at the end."""
        h = Holder(scope.get(_ABORT), self.now())
        self._holders[h] = None
        try:
            yield h
        finally:
            del self._holders[h]
            self.give(h, h.held)

    def try_take(self, h: Holder, n: int) -> bool:
        """Hold ``n`` more bytes for ``h`` if there is room now (not counted as received:
        room for bytes on their way, `cubby.server.framesink`); False, and nothing held, if not."""
        if self.held + n > self.limit:
            return False
        self.held += n
        h.held += n
        return True

    async def take(self, h: Holder, n: int, *, patient: bool = False, arrived: int | None = None) -> None:
        """Count ``n`` more bytes received and held by ``h``. Short of room, close slow bodies
        to make it and wait for it, up to `wait` seconds, then `Unavailable` (503). Unless
        ``patient`` (a stream that can pause: an upload, whose connection is not read while it
        waits), a request waits only for room that closing slow bodies is freeing, and is
        refused at once otherwise: each waiting request still holds the piece it asks room
        for, and a crowd of them would hold what the budget is there to bound. ``arrived``:
        the bytes this counts as received, when not ``n`` (room taken before they come)."""
        h.received += n if arrived is None else arrived
        if self.held + n > self.limit:
            await self._make_room(h, n, patient)
        self.held += n
        h.held += n

    async def _make_room(self, h: Holder, n: int, patient: bool) -> None:
        deadline = self.now() + self.wait
        with self.servers_turn(h):  # waiting for room is not held against the client
            while self.held + n > self.limit:
                freeing = self._close_slow(self.held + n - self.limit, h)
                left = deadline - self.now()
                if left <= 0 or (not patient and self.held - freeing + n > self.limit):
                    raise Unavailable("the server is receiving too many request bodies at once; retry shortly")
                self._freed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._freed.wait()

    def _close_slow(self, short: int, asking: Holder) -> int:
        """Close the oldest slow bodies until those being closed hold ``short`` bytes; the bytes
        held by every body being closed (their requests give them back as they end)."""
        now = self.now()
        closing = sum(o.held for o in self._holders if o.closed)
        for other in self._holders:
            if closing >= short:
                break
            if other is asking or other.closed or other.abort is None or not other.held:
                continue
            if other.slow(now, self.grace, self.min_rate):
                other.closed = True
                closing += other.held
                other.abort()
        return closing

    def give(self, h: Holder, n: int) -> None:
        """``h`` holds ``n`` bytes fewer (stored, or its request ended)."""
        if n:
            h.held -= n
            self.held -= n
            self._freed.set()

    @contextlib.contextmanager
    def servers_turn(self, h: Holder) -> Iterator[None]:
        """While the server works on what ``h`` sent (storing it), ``h`` is not judged slow."""
        start = self.now()
        h.busy = True
        try:
            yield
        finally:
            h.busy = False
            h.waited += self.now() - start


def lent(scope: MutableMapping[str, Any]) -> BodyBudget | None:
    """The budget `BodyBudget.lend` gave the request of ``scope`` (None: it came another way)."""
    budget: BodyBudget | None = scope.get(_BUDGET)
    return budget


__all__ = ["MIN_RATE", "WAIT", "BodyBudget", "Holder", "allow_abort", "lent"]
