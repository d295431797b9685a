"""Request bodies written with gathered writes: `GatheredBody`.

A 1 GiB `cubby put` through httpx handed every chunk to httpcore as a piece of a body: h11
wraps each piece in an event (and, with a Content-Length, checks and counts it), httpcore
writes it with ``sendall`` after its own bookkeeping, and the rate limiter's pacing made a
``bytes`` copy of every 64 KiB slice. Here the body is a list of buffers (each frame's
36-byte header and a view of its chunk's bytes, never joined), and the kernel copies them
straight from those buffers with ``socket.sendmsg``: up to `IOV_MAX` buffers and as many bytes
as the socket takes in one system call, and no ``bytes`` made on the way.

With a rate limit, each call is limited to `PACE_STEP` bytes and the bytes sent are paid to
the limiter after each call (as downloads pay after each ``recv_into``), so the average rate
is the limiter's and a burst is at most one step beyond it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

IOV_MAX = 1024
"""Buffers handed to one ``sendmsg`` (Linux's and macOS's UIO_MAXIOV; the system's own
limit, where it says a smaller one, wins)."""
try:
    IOV_MAX = max(16, min(IOV_MAX, os.sysconf("SC_IOV_MAX")))
except (AttributeError, ValueError, OSError):
    pass
PACE_STEP = 64 * 1024
"""Bytes per ``sendmsg`` when a rate limit paces the body (as `TokenBucket.paced`'s pieces)."""


class GatheredBody:
    """A request body made of buffers, sent in order with ``sendmsg``."""

    def __init__(self, buffers: Sequence[Any]) -> None:
        self.views = [memoryview(b).cast("B") for b in buffers if len(b)]
        self.length = sum(len(v) for v in self.views)

    def send(self, sock: socket.socket, on_sent: Callable[[int], None] | None = None) -> None:
        """Send every buffer; a ``sendmsg`` that takes part of them goes on from where it
        stopped. The socket's own timeout bounds each wait for room to write (`TimeoutError`);
        a connection the server closed raises the `OSError` the kernel gives."""
        views = self.views
        step = PACE_STEP if on_sent is not None else None
        i, off = 0, 0
        while i < len(views):
            vec: list[memoryview] = []
            room = step
            j = i
            first = True
            while j < len(views) and len(vec) < IOV_MAX:
                v = views[j][off:] if first else views[j]
                first = False
                if room is not None:
                    if len(v) >= room:
                        vec.append(v[:room])
                        break
                    room -= len(v)
                vec.append(v)
                j += 1
            n = sock.sendmsg(vec)
            if on_sent is not None and n:
                on_sent(n)
            while n:
                left = len(views[i]) - off
                if n >= left:
                    n -= left
                    i, off = i + 1, 0
                else:
                    off += n
                    n = 0
