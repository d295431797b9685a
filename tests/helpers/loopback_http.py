"""Servers on loopback that script what a peer does on the wire, for the client's transport
tests (`tests/client/test_directhttp.py`, `test_directsend.py`): a subclass says what becomes
of each connection (`LoopbackServer.handle`); the listening, the count of connections and the
closing are here, once."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Self


class LoopbackServer:
    """A listener on 127.0.0.1 whose accept thread hands each connection to `handle`, one
    after the other; `accepted` counts them. Use it in a ``with`` block (or call `close`)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, conn: socket.socket) -> None:
        """What the server does with one accepted connection (on the accept thread)."""
        raise NotImplementedError

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self.handle(conn)

    def close(self) -> None:
        self.listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
