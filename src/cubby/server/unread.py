"""What becomes of a request body that the route did not read.

A route answers an error (401 for a stranger, 413 over the route's cap, 415, 404) without
reading the rest of the body, and that is what keeps such a request cheap. But the connection
still holds the unread bytes, and each way of dealing with them has a cost:

- Close at once, and the client's kernel may receive a TCP reset (unread data at close)
  before its program has read the answer: the client sees "connection reset", not the 401.
- Keep the connection, and the server must read and throw away the whole body to find the
  next request: a stranger's 60 MiB would still be received, just not parsed.

So, before the answer starts, the front (`cubby.server.front`) reads and drops at most `DRAIN_BYTES` of what
is left (for at most `DRAIN_SECONDS`): an ordinary small request is then complete, and its
answer travels on a kept-alive connection like any other. If more is left, a stranger's answer
is marked ``Connection: close``, so uvicorn closes the connection once it is sent and never
drains the rest (while the route ran, uvicorn buffered at most its 64 KiB flow-control window
of the body). An authenticated caller's answer (a 413 over a route's cap) keeps the connection,
and uvicorn discards the rest as it arrives, so a client that sends its whole body before
reading reliably sees the 413: that costs bandwidth, never memory, and only a known user can
ask for it.
"""

from __future__ import annotations

from typing import Protocol

import anyio
from starlette.types import Message, Scope

from cubby.server.bodies import body_allowed

DRAIN_BYTES = 64 * 1024
DRAIN_SECONDS = 0.5


def declares_body(scope: Scope) -> bool:
    """Whether the request says a body follows (a non-zero Content-Length, or chunked)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.strip() not in (b"", b"0"):
            return True
        if name == b"transfer-encoding":
            return True
    return False


def ends_body(msg: Message) -> bool:
    """Whether a received message is the body's last (or the client went away)."""
    return msg["type"] == "http.disconnect" or not msg.get("more_body", False)


class BodyReader(Protocol):
    """What `drain` reads through: the request's receive, which keeps ``finished`` up to date
    (`ends_body`)."""

    finished: bool

    async def receive(self) -> Message: ...


async def drain(reader: BodyReader) -> None:
    """Before an answer starts on a body not read to its end: read and drop at most
    `DRAIN_BYTES` more of it, for at most `DRAIN_SECONDS`."""
    dropped = 0
    with anyio.move_on_after(DRAIN_SECONDS):
        while not reader.finished and dropped <= DRAIN_BYTES:
            dropped += len((await reader.receive()).get("body", b""))


def closing(scope: Scope, start: Message) -> Message:
    """The answer's start message, after `drain` left the body unfinished: with
    ``Connection: close`` for a stranger (uvicorn then never drains the rest), unchanged for
    a known caller."""
    if body_allowed(scope):
        return start
    return {**start, "headers": [*start.get("headers", ()), (b"connection", b"close")]}
