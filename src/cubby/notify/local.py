"""The broker between the processes of one machine: Unix datagram sockets in one folder.

Why. `cubby serve --workers N` on the embedded default runs N processes on one SQLite
database with no Redis or NATS beside them. With the in-process broker each worker woke only
the long-polls and WebSockets it held itself: a commit answered by one worker left a client
waiting on another until its poll timed out. The supervisor (`cubby.server.workers`) makes a
private folder (mode 0700) and names it here, ``local:///FOLDER``; every worker binds one
datagram socket in it and a publish sends the message to each socket found there.

Delivery is what the `Broker` contract asks: best-effort and at most once. A datagram to a
socket on this machine is not lost in transit; it is dropped only when the receiver's queue
is full (`net.unix.max_dgram_qlen` datagrams, 512 by default, unread because its event loop
is stalled), which is counted and logged. A socket left by a worker that died (SIGKILL: it
could not unlink it) refuses the next datagram, and the publisher removes it. No publish waits:
the sockets are non-blocking, so the event loop spends a directory listing and one ``sendto``
per worker.

The folder lives in the machine's temporary folder, where a cleaner may remove what has not
changed for days (systemd-tmpfiles' ``10d`` on some distributions). A subscriber checks every
`CHECK_EVERY` seconds that its socket is still there, and when it is not, makes the folder again
(mode 0700) and binds a new one: a server that ran for weeks keeps its notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from pathlib import Path

from cubby.errors import BadRequest, Unavailable
from cubby.notify.base import MessageHandler, ReconnectHandler

log = logging.getLogger("cubby.notify")

SUFFIX = ".sock"
CHECK_EVERY = 60.0
"""Seconds between a subscriber's checks that its socket file still exists."""
RECEIVE_BUFFER = 1 << 20
"""Bytes of queue a subscriber asks for (the kernel may grant less; the datagram count limit
is usually the one met first)."""


def folder_of(url: str) -> Path:
    """The folder of a ``local:///FOLDER`` URL (an absolute path: a relative one would name a
    different folder for each process's working directory)."""
    rest = url.split(":", 1)[1] if ":" in url else ""
    path = rest[2:] if rest.startswith("//") else rest
    if not path.startswith("/") or "?" in path or "#" in path:
        raise BadRequest(f"broker {url!r}: use local:///ABSOLUTE/FOLDER", code="bad_broker_url")
    return Path(path)


class LocalBroker:
    """Publish to, and subscribe from, the processes sharing ``folder`` (see the module)."""

    def __init__(self, folder: Path, *, check_every: float = CHECK_EVERY) -> None:
        self.folder = Path(folder)
        self.check_every = check_every
        self.dropped = 0
        """Messages a full receiver could not take (see the module docstring)."""
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._out.setblocking(False)
        self._in: socket.socket | None = None
        self._path: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_message: MessageHandler | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def publish(self, topic: str, payload: bytes) -> None:
        message = topic.encode("ascii") + b"\0" + payload
        try:
            peers = [e.path for e in os.scandir(self.folder) if e.name.endswith(SUFFIX)]
        except OSError as exc:
            raise Unavailable(f"the notification folder {self.folder} cannot be read: {exc.strerror}") from exc
        for peer in peers:
            try:
                self._out.sendto(message, peer)
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(peer)  # its process died without removing it: nobody reads it
            except BlockingIOError:
                self.dropped += 1
                log.warning("notification dropped: a worker's queue is full", extra={"peer": os.path.basename(peer)})

    async def subscribe(self, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None:
        if self._on_message is not None:
            raise RuntimeError("subscribe is called once")
        self._loop = asyncio.get_running_loop()
        self._bind(on_message)
        self._on_message = on_message
        self._timer = self._loop.call_later(self.check_every, self._check)

    def _bind(self, on_message: MessageHandler) -> None:
        """A new socket in the folder, read by the loop."""
        assert self._loop is not None
        path = self.folder / f"{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.setblocking(False)
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise Unavailable(f"cannot listen for notifications in {self.folder}: {exc.strerror}") from exc
        self._in, self._path = sock, path
        self._loop.add_reader(sock.fileno(), self._drain, sock, on_message)

    def _check(self) -> None:
        """Bind again if a cleaner removed the socket file (or the whole folder)."""
        assert self._loop is not None and self._on_message is not None
        self._timer = self._loop.call_later(self.check_every, self._check)
        if self._path is not None and self._path.exists():
            return
        log.warning("the notification socket was removed; listening on a new one", extra={"folder": str(self.folder)})
        self._unbind()
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._bind(self._on_message)
        except (OSError, Unavailable) as exc:
            log.error("cannot listen for notifications", extra={"folder": str(self.folder), "error": str(exc)})

    def _unbind(self) -> None:
        sock, self._in = self._in, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = None

    @staticmethod
    def _drain(sock: socket.socket, on_message: MessageHandler) -> None:
        """Every datagram queued now (the loop calls this when the socket is readable)."""
        while True:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # closed under us by `close`
                return
            topic, sep, payload = data.partition(b"\0")
            if sep:
                on_message(topic.decode("ascii", "replace"), payload)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unbind()
        self._out.close()


__all__ = ["LocalBroker", "folder_of"]
