"""The notification side: one hub fed by one broker subscription, resynchronised from the
journal heads whenever that subscription may have missed messages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection

from cubby.errors import BadRequest, CubbyError, NotFound, Unavailable
from cubby.notify.base import Broker
from cubby.notify.hub import Hub, Subscription, Wake

log = logging.getLogger("cubby.notify")

HeadsReader = Callable[[Collection[int]], Awaitable[dict[int, int]]]
"""Reads the current journal heads of the given namespaces from the metadata database."""


class NotifyService:
    """Starts its broker subscription on first use (from the event loop the server runs on),
    so that the notification role needs no start-up hook; a failed start is retried by the
    next request, which answers `Unavailable` meanwhile."""

    def __init__(
        self, broker: Broker, read_heads: HeadsReader, *, observe_fanout: Callable[[float], None] | None = None,
    ) -> None:
        self.broker = broker
        self.read_heads = read_heads
        self.observe_fanout = observe_fanout
        """Called with the seconds one change took to wake its subscribers (server metrics)."""
        self.hub = Hub()
        self.resyncs = 0
        self._ready: asyncio.Future[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._resync_again = False

    async def ensure_started(self) -> None:
        if self._ready is None or (self._ready.done() and self._ready.exception() is not None):
            self._ready = asyncio.ensure_future(self._start())
        try:
            await asyncio.shield(self._ready)
        except CubbyError:
            raise
        except Exception as exc:
            raise Unavailable(f"the notification broker is unreachable: {exc}") from exc

    async def _start(self) -> None:
        await self.broker.subscribe(self.on_message, self.on_reconnect)

    def on_message(self, topic: str, payload: bytes) -> None:
        kind, _, ident = topic.partition(".")
        try:
            if kind == "ns":
                start = time.perf_counter()
                self.hub.advance(int(ident), int(payload))
                if self.observe_fanout is not None:
                    self.observe_fanout(time.perf_counter() - start)
            elif kind == "user":
                self.hub.account_changed(int(ident))
        except ValueError:
            log.warning("ignoring a malformed broker message on %r", topic)

    async def on_reconnect(self) -> None:
        """Messages may have been lost while the broker connection was down: re-read the heads
        of every namespace somebody waits on and wake those that moved. Concurrent requests
        coalesce into one more pass after the running one."""
        if self._resync_task is not None and not self._resync_task.done():
            self._resync_again = True
            return
        self._resync_task = asyncio.get_running_loop().create_task(self._resync_loop())

    async def _resync_loop(self) -> None:
        while True:
            self._resync_again = False
            try:
                await self.resync()
            except Exception:
                log.exception("resynchronising from the journal heads failed; retrying")
                await asyncio.sleep(1.0)
                self._resync_again = True
            if not self._resync_again:
                return

    async def resync(self) -> int:
        self.resyncs += 1
        ns_ids = self.hub.namespaces()
        heads = await self.read_heads(ns_ids) if ns_ids else {}
        woken = self.hub.advance_many(heads.items())
        log.info("resynchronised %d namespaces from the journal, %d subscribers woken", len(ns_ids), woken)
        return woken

    async def check(self, cursor: dict[int, int]) -> dict[int, int]:
        """The current heads of the cursor's namespaces; a cursor position past its head is bad
        input (the client invented it), a namespace without a row does not exist."""
        heads = await self.read_heads(list(cursor))
        for ns, pos in cursor.items():
            if ns not in heads:
                raise NotFound(f"namespace {ns} does not exist", ns_id=ns)
            if pos > heads[ns]:
                raise BadRequest(
                    f"cursor position {pos} of namespace {ns} is past its journal head {heads[ns]}",
                    code="bad_cursor", ns_id=ns,
                )
        return heads

    async def wait_once(self, user_id: int, cursor: dict[int, int], timeout: float) -> tuple[dict[int, int], Wake]:
        """Wait until a namespace of ``cursor`` moves past it, the account changes, or
        ``timeout`` seconds pass. Returns the heads as far as known, and why it returned.

        The subscription is registered *before* the heads are read, so a commit either shows
        in the heads read here or publishes after the registration and wakes it: a change that
        landed between the client's last read and this call is never missed."""
        fut: asyncio.Future[Wake] = asyncio.get_running_loop().create_future()

        def deliver(sub: Subscription, wake: Wake) -> None:
            if not fut.done():
                fut.set_result(wake)

        sub = Subscription(user_id, dict(cursor), deliver, oneshot=True)
        self.hub.add(sub, timeout=timeout)
        try:
            heads = await self.check(cursor)
            moved = {ns: h for ns, h in heads.items() if h > cursor[ns]}
            if moved:
                return heads, Wake(heads=moved)
            wake = await fut
            for ns, h in wake.heads.items():
                heads[ns] = max(heads.get(ns, 0), h)
            return heads, wake
        finally:
            self.hub.remove(sub)

    async def close(self) -> None:
        self.hub.close()
        await self.broker.close()
