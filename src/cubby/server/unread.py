"""What becomes of a request body that the route did not read.

A route answers an error (401 for a stranger, 413 over the route's cap, 415, 404) without
reading the rest of the body, and that is what keeps such a request cheap. But the connection
still holds the unread bytes, and each way of dealing with them has a cost:

- Close at once, and the client's kernel may receive a TCP reset (unread data at close)
  before its program has read the answer: the client sees "connection reset", not the 401.
- Keep the connection, and the server must read and throw away the whole body to find the
  next request: a stranger's 60 MiB would still be received, just not parsed.

So, before the answer starts, this middleware reads and drops at most `DRAIN_BYTES` of what
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

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class CloseUnreadBody:
    """ASGI middleware: an answer that starts before the request's body was read to its end
    first reads a little more of it, and carries ``Connection: close`` if a stranger's body
    still goes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not declares_body(scope):
            await self.app(scope, receive, send)
            return
        finished = False

        async def tracking_receive() -> Message:
            nonlocal finished
            msg = await receive()
            if msg["type"] == "http.disconnect" or not msg.get("more_body", False):
                finished = True
            return msg

        async def drain() -> None:
            dropped = 0
            with anyio.move_on_after(DRAIN_SECONDS):
                while not finished and dropped <= DRAIN_BYTES:
                    dropped += len((await tracking_receive()).get("body", b""))

        async def closing_send(msg: Message) -> None:
            if msg["type"] == "http.response.start" and not finished:
                await drain()
                if not finished and not body_allowed(scope):
                    msg = {**msg, "headers": [*msg.get("headers", ()), (b"connection", b"close")]}
            await send(msg)

        await self.app(scope, tracking_receive, closing_send)
