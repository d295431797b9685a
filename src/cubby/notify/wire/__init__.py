"""A lean HTTP/1.1 and WebSocket server for the notification role running on its own.

Why not uvicorn + Starlette here: an idle long-poll under ASGI keeps a task and a chain of
coroutine frames alive (server cycle, middlewares, router, endpoint) plus request and scope
objects: about 21 KB per connection measured (28 KB for a WebSocket), too much for 100,000
connections in 2 GiB. Here a connection is one `asyncio.Protocol` object with slots; while it
waits, nothing else exists for it but its hub subscription (and, for a WebSocket, the
``websockets`` framing state): the hub writes the answer straight to the transport when a
commit or the shared timer wakes it. A coroutine runs only while a request is being
authenticated and checked against the journal heads, and ends before the wait.

Three modules, one job each:

- `.websocket`: the codec — the opening handshake checked, framing by ``websockets``' sans-I/O
  `Protocol`;
- `.connection`: one connection's bytes, held to the limits and deadlines of a
  `cubby.server.gate.ConnectionGate` (shared with the uvicorn front's rules);
- `.endpoints`: the routes, per-token limits and revocation.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable

from cubby.errors import CubbyError
from cubby.notify.service import NotifyService
from cubby.notify.wire.connection import Connection
from cubby.notify.wire.endpoints import Authenticate, Endpoints
from cubby.server.gate import ConnectionGate

log = logging.getLogger("cubby.notify")


async def serve(
    service: NotifyService, authenticate: Authenticate, host: str, port: int, gate: ConnectionGate,
    *, max_waits: int = 32, sock: socket.socket | None = None, advertised: dict[str, str | None] | None = None,
    metrics: Callable[[], bytes] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; then close the listening socket and every connection.
    ``sock``, an already-bound listening socket, is used instead of binding ``host:port``."""
    loop = asyncio.get_running_loop()
    endpoints = Endpoints(service, authenticate, max_waits=max_waits, advertised=advertised, metrics=metrics)

    def factory() -> Connection:
        return Connection(endpoints, gate)

    if sock is not None:
        server = await loop.create_server(factory, sock=sock, backlog=4096)
    else:
        server = await loop.create_server(factory, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        gate.close()
        service.hub.close()
        try:
            await asyncio.wait_for(service.broker.close(), 3)
        except (TimeoutError, OSError, CubbyError) as exc:
            log.warning("closing the broker failed: %s", exc)
