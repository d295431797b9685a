"""An answer's head and body in one write, where uvicorn makes two.

uvicorn's HTTP cycle writes the status line and headers as soon as the app sends
``http.response.start``, and the body when it sends ``http.response.body``: two ``send``
system calls and two TCP segments for every small answer (with TCP_NODELAY, which
`cubby.server.guard.no_delay` sets, each goes out at once). On a single-file commit those two
writes were ~7% of the server's CPU (docs: bench/README.md). `OneWrite` stands in for the
transport of one request's cycle: it holds the head and sends it together with the first
piece of the body. The bytes on the wire are the same; only the number of writes changes.

When the head is held: only for an answer whose body will follow as writes, that is one with
a Content-Length above zero, not chunked, and not to a HEAD request. Anything else (``100
Continue``, a chunked stream, an empty or HEAD answer) is written at once, as before. If the
cycle closes the connection with the head still held (the app failed after starting the
answer), the head goes out before the close, as it did.
"""

from __future__ import annotations

import asyncio
from typing import Any


class OneWrite:
    """The transport of one uvicorn ``RequestResponseCycle``: `write` holds the answer's head
    until the body's first write; everything else is the real transport's."""

    __slots__ = ("cycle", "head", "saw_head", "transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self.transport = transport
        self.cycle = cycle
        self.head: bytes | None = None
        self.saw_head = False

    def write(self, data: bytes) -> None:
        head = self.head
        if head is not None:
            self.head = None
            self.transport.write(head + data)
            return
        if not self.saw_head and self.cycle.response_started:
            # uvicorn sets ``response_started`` and the body's framing, then writes the head:
            # the first write after it is the head, and nothing else is written in between.
            self.saw_head = True
            cycle = self.cycle
            if (
                cycle.chunked_encoding is False and cycle.expected_content_length > 0
                and cycle.scope.get("method") != "HEAD"
            ):
                self.head = data
                return
        self.transport.write(data)

    def close(self) -> None:
        head, self.head = self.head, None
        if head is not None:
            self.transport.write(head)
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)  # anything else a cycle might ask of its transport
