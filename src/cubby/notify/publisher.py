"""The metadata side of notifications: turn acknowledged commits into broker messages.

`ServerContext.committed` must never block or fail a commit that is already acknowledged, so
`Publisher.commit` only records the new head and returns; one flusher task sends what is
pending. While the broker is unreachable the pending heads are kept, coalesced per namespace
(the highest head wins: it implies all lower ones), and sent when the broker answers again, so
a broker outage delays notifications but loses none that this process produced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cubby.errors import CubbyError
from cubby.notify.base import Broker, ns_topic, user_topic

log = logging.getLogger("cubby.notify")

MAX_BACKOFF = 5.0


class Publisher:
    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._pending_ns: dict[int, int] = {}
        self._pending_users: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    # Called from request handlers: on the event loop, or from a worker thread.
    def commit(self, ns_id: int, head: int) -> None:
        self._on_loop(self._note_commit, ns_id, head)

    def account(self, user_id: int) -> None:
        self._on_loop(self._note_account, user_id)

    def _on_loop(self, fn: Callable[..., None], *args: int) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: hand over to the loop we last ran on
            if self._loop is None or self._loop.is_closed():
                log.warning("no event loop yet: notification %s%s dropped", fn.__name__, args)
                return
            self._loop.call_soon_threadsafe(fn, *args)
            return
        fn(*args)

    def _note_commit(self, ns_id: int, head: int) -> None:
        if head > self._pending_ns.get(ns_id, -1):
            self._pending_ns[ns_id] = head
        self._kick()

    def _note_account(self, user_id: int) -> None:
        self._pending_users.add(user_id)
        self._kick()

    def _kick(self) -> None:
        if self._closed:
            return
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        backoff = 0.05
        while (self._pending_ns or self._pending_users) and not self._closed:
            ns_items = list(self._pending_ns.items())
            users = list(self._pending_users)
            self._pending_ns.clear()
            self._pending_users.clear()
            failed = False
            # Accounts first: a member woken by a membership change should learn that its
            # folders changed, not only that the same change moved some journal head.
            for j, uid in enumerate(users):
                try:
                    await self._broker.publish(user_topic(uid), b"")
                except (CubbyError, OSError, TimeoutError) as exc:
                    log.warning("broker publish failed, will retry: %s", exc)
                    self._pending_users.update(users[j:])
                    for ns, h in ns_items:
                        self._note_commit_quiet(ns, h)
                    failed = True
                    break
            if not failed:
                for i, (ns_id, head) in enumerate(ns_items):
                    try:
                        await self._broker.publish(ns_topic(ns_id), str(head).encode())
                    except (CubbyError, OSError, TimeoutError) as exc:
                        log.warning("broker publish failed, will retry: %s", exc)
                        for ns, h in ns_items[i:]:
                            self._note_commit_quiet(ns, h)
                        failed = True
                        break
            if failed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                backoff = 0.05

    def _note_commit_quiet(self, ns_id: int, head: int) -> None:
        if head > self._pending_ns.get(ns_id, -1):
            self._pending_ns[ns_id] = head

    async def close(self) -> None:
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
