"""The limits every connection of an HTTP front is held to, and the one object per process that
counts connections and enforces their deadlines.

Both fronts (uvicorn + Starlette in `cubby.server.guard`, the lean notification server in
`cubby.notify.wire`) let a `ConnectionGate` decide:

- **who may connect**: at most ``max_per_address`` connections per client address (the peer, or
  for a trusted proxy the address its request names: `cubby.server.peers`) and at most
  ``max_connections`` in all, kept below the open-file limit so that ``accept()`` never fails
  for want of a descriptor. At the global cap the oldest connection that has not yet sent a
  whole request (or sits idle between requests) is closed to make room, so idle sockets can
  never lock everybody out: a client that sends its request promptly is always served.
- **how long a connection may owe us something**: a connection waiting for a request's headers
  is in the *request* lane, one resting between requests (or a WebSocket between frames) in the
  *idle* lane. Every lane has one timeout, so its members, kept in arrival order, are also in
  deadline order: one shared timer closes those at the front whose time is up, with no timer
  and no task per connection (the notification front holds 100,000 of them).

A connection that is being answered (a long-poll waiting for a change, a download) is in no
lane: it is the server's turn, and the server's own limits apply.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cubby.config import Config
from cubby.server.peers import TrustedProxies

FD_RESERVE = 128
"""Descriptors kept for everything that is not a client connection: the listening sockets, the
database pool, the broker, log files, block files being read and written."""


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_connections: int = 0
    """0: the process's open-file limit less `FD_RESERVE`."""
    max_per_address: int = 256
    max_buffered_out: int = 256 * 1024
    """Bytes of answers queued for a client that does not read; beyond it the connection is
    dropped. (Reading already stops at the transport's high-water mark; this bounds what one
    chunk of pipelined input can still produce.)"""
    max_pipelined: int = 16
    """Requests queued behind the one being answered on a connection."""
    max_inflight_bytes: int = 16 * 1024 * 1024
    """Bytes of request bodies being received at once, all connections together, on a front
    that buffers whole bodies (the notification front, whose bodies are cursors of a few KB:
    16 bodies of the 1 MiB maximum, or thousands of real ones). At 64 MiB a flood of slow
    bodies under CPU load grew the process by up to 134 MiB (what the allocator keeps of its
    busiest moment, `cubby.core.malloc`)."""

    @classmethod
    def from_config(cls, config: Config) -> ConnectionLimits:
        return cls(
            header_timeout=config.header_timeout,
            idle_timeout=config.idle_timeout,
            max_connections=config.max_connections,
            max_per_address=config.max_connections_per_address,
        )


def descriptor_budget(reserve: int = FD_RESERVE) -> int:
    """Connections this process can hold: the soft open-file limit less ``reserve``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, int(soft) - reserve)


class Expirable(Protocol):
    """What the gate needs of a connection: a way to end it now."""

    def expire(self) -> None:
        """Close the connection at once (abort: do not wait for a client that does not read)."""


class Lane:
    """Connections owing the server the same kind of thing, in the order they started to owe
    it; with one timeout per lane that is also the order of their deadlines."""

    __slots__ = ("members", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.members: dict[Expirable, float] = {}

    def enter(self, conn: Expirable, now: float) -> None:
        """Start (or restart) ``conn``'s clock: it moves to the back."""
        self.members.pop(conn, None)
        self.members[conn] = now + self.timeout

    def leave(self, conn: Expirable) -> None:
        self.members.pop(conn, None)

    def due(self, now: float) -> list[Expirable]:
        out: list[Expirable] = []
        for conn, deadline in self.members.items():
            if deadline > now:
                break
            out.append(conn)
        return out

    def oldest(self) -> Expirable | None:
        return next(iter(self.members), None)


class ConnectionGate:
    """Counts and deadlines for all connections of one front in one process (event loop only)."""

    def __init__(
        self, limits: ConnectionLimits, trusted: TrustedProxies | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.limits = limits
        self.trusted = trusted or TrustedProxies()
        self.max_connections = limits.max_connections or descriptor_budget()
        self.open = 0
        self.per_address: dict[str, int] = {}
        self.request = Lane(limits.header_timeout)
        self.idle = Lane(limits.idle_timeout)
        self.inflight_bytes = 0
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._tick = max(0.05, min(1.0, limits.header_timeout / 4, limits.idle_timeout / 4))

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    # -- admission --------------------------------------------------------------------------
    def address_key(self, peer: str) -> str | None:
        """What a new connection from ``peer`` is counted under: the peer itself, or nothing yet
        for a trusted proxy (its request names the client: see `claim`)."""
        return None if self.trusted.trusts(peer) else peer

    def admit(self, key: str | None) -> str | None:
        """Count a new connection under ``key``: None if admitted, else why not
        (``"too_many_from_address"`` or ``"full"``: every slot holds a connection mid-request)."""
        if key is not None and self.per_address.get(key, 0) >= self.limits.max_per_address:
            return "too_many_from_address"
        if self.open >= self.max_connections:
            victim = self.request.oldest() or self.idle.oldest()
            if victim is None:
                return "full"
            self.request.leave(victim)
            self.idle.leave(victim)
            victim.expire()
        self.open += 1
        if key is not None:
            self.per_address[key] = self.per_address.get(key, 0) + 1
        return None

    def claim(self, key: str | None, client: str) -> bool:
        """A connection counted under ``key`` turns out (from a trusted proxy's header) to be
        ``client``'s: count it there instead; False if ``client`` is at its cap."""
        if key == client:
            return True
        if self.per_address.get(client, 0) >= self.limits.max_per_address:
            return False
        self._uncount(key)
        self.per_address[client] = self.per_address.get(client, 0) + 1
        return True

    def release(self, conn: Expirable, key: str | None) -> None:
        """``conn`` is gone: forget it (call once per admitted connection)."""
        self.request.leave(conn)
        self.idle.leave(conn)
        self.open -= 1
        self._uncount(key)

    def _uncount(self, key: str | None) -> None:
        if key is None:
            return
        n = self.per_address.get(key, 0) - 1
        if n > 0:
            self.per_address[key] = n
        else:
            self.per_address.pop(key, None)

    # -- body budget ------------------------------------------------------------------------
    def reserve(self, n: int) -> bool:
        """Take ``n`` bytes of the shared budget for request bodies being received."""
        if self.inflight_bytes + n > self.limits.max_inflight_bytes:
            return False
        self.inflight_bytes += n
        return True

    def give_back(self, n: int) -> None:
        self.inflight_bytes -= n

    # -- deadlines --------------------------------------------------------------------------
    def awaiting_request(self, conn: Expirable) -> None:
        """``conn`` owes a request: close it unless the request is in within the header timeout."""
        self.idle.leave(conn)
        if conn not in self.request.members:
            self.request.enter(conn, self.now())
            self._arm()

    def resting(self, conn: Expirable) -> None:
        """``conn`` was answered (or a WebSocket frame arrived): it may rest for the idle timeout."""
        self.request.leave(conn)
        self.idle.enter(conn, self.now())
        self._arm()

    def busy(self, conn: Expirable) -> None:
        """It is the server's turn on ``conn``: no deadline of ours."""
        self.request.leave(conn)
        self.idle.leave(conn)

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._tick, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self.now()
        for lane in (self.request, self.idle):
            for conn in lane.due(now):
                lane.leave(conn)
                conn.expire()
        if self.request.members or self.idle.members:
            self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
