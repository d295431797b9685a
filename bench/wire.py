"""A loopback TCP proxy that counts the bytes going each way: what cubby really puts on the
wire (request bodies, JSON, headers and all), to set beside rsync's own byte counts."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Self


class CountingProxy:
    """Forwards 127.0.0.1:``port`` to ``target_port``; ``sent`` = client to server bytes,
    ``received`` = server to client bytes, over every connection since the last `reset`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sent = 0
        self.received = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.sent = self.received = 0

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            open_halves = [2]
            for args in ((client, upstream, True, open_halves), (upstream, client, False, open_halves)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool, open_halves: list[int]) -> None:
        try:
            while data := src.recv(1 << 20):
                dst.sendall(data)
                with self._lock:
                    if upstream:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            with self._lock:
                open_halves[0] -= 1
                last = open_halves[0] == 0
            if last:  # both directions are done: the connection is over
                src.close()
                dst.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
