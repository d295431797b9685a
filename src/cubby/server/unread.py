"""Close the connection of a request answered before its body was read.

A route answers an error (401 for a stranger, 413 over the route's cap, 415, 404) without
reading the rest of the body, and that is what keeps such a request cheap. But on a kept-alive
connection the server would then have to read and throw away the rest of the body to find the
next request: a stranger's 60 MiB would still be received, just not parsed. This middleware
marks such an answer ``Connection: close``, so uvicorn closes the connection once the answer
is sent and never drains the unread body (while the route ran, uvicorn buffered at most its
64 KiB flow-control window of it).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
    carries ``Connection: close``."""

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

        async def closing_send(msg: Message) -> None:
            if msg["type"] == "http.response.start" and not finished:
                msg = {**msg, "headers": [*msg.get("headers", ()), (b"connection", b"close")]}
            await send(msg)

        await self.app(scope, tracking_receive, closing_send)
