"""Answers leave at once: `guard.no_delay` turns Nagle's algorithm off on connections of a
listening socket passed in by descriptor, which uvicorn wraps as ``AF_UNIX`` (so the event
loop does not do it). With it on, every answer on a kept-alive connection waited for the
client's delayed ACK (some 40 ms)."""

from __future__ import annotations

import asyncio
import socket

from cubby.server.guard import no_delay
from tests.helpers.live_server import listening_socket


def test_connections_of_a_socket_passed_by_descriptor_send_at_once() -> None:
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
            sock = transport.get_extra_info("socket")
            before = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            no_delay(transport)
            seen.extend([before, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)])
            transport.close()

    async def main() -> None:
        listener = listening_socket()
        passed = socket.fromfd(
            listener.fileno(), socket.AF_UNIX, socket.SOCK_STREAM
        )  # as uvicorn does with --fd
        server = await asyncio.get_running_loop().create_server(Probe, sock=passed)
        _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        listener.close()

    asyncio.run(main())
    assert seen == [0, 1]  # off as the loop gave it, on after `no_delay`
