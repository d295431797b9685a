"""A TCP relay on loopback that counts round trips between a client and a server.

It listens on 127.0.0.1 port 0 and forwards every connection to the upstream address, byte
for byte. A *turn* is the client speaking after the server did (or first): a request sent in
one message or in many TCP segments is one turn, and so is a reply in many segments, so
``turns`` counts round trips whatever the sockets' buffering. Tests read it before and after
an operation to count the operation's round trips on the wire (no driver hook needed).
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class TurnCounter:
    """The relay (see module); ``port`` is set once it listens."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self._turns = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def turns(self) -> int:
        with self._lock:
            return self._turns

    def start(self) -> TurnCounter:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            thread = threading.Thread(target=self._relay, args=(client, server), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, server)
        sel.register(server, selectors.EVENT_READ, client)
        client_spoke_last = False
        try:
            while not self._closed.is_set():
                for key, _ in sel.select(timeout=0.2):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(1 << 16)
                    if not data:
                        return
                    if source is client and not client_spoke_last:
                        with self._lock:
                            self._turns += 1
                    client_spoke_last = source is client
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            server.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)


@contextmanager
def turn_counter(host: str, port: int) -> Iterator[TurnCounter]:
    """A running `TurnCounter` in front of ``host:port`` until the block ends."""
    relay = TurnCounter(host, port).start()
    try:
        yield relay
    finally:
        relay.close()
