"""uvicorn's HTTP and WebSocket protocols, held to the limits of a `ConnectionGate`.

Why wrap the protocol classes (uvicorn takes ``http=`` and ``ws=`` classes): uvicorn by itself
closes a connection only after a response (``timeout_keep_alive``), so a socket that never sends
a request, or stops half-way through its headers, is kept forever; it has no cap on
connections per address, and its only global cap (``limit_concurrency``) answers 503 after
reading a request, by which time the descriptor is already spent. And it parses every request
of a pipelined burst at once, queueing one request object per request (20 MiB of small
pipelined requests made a 1.1 GB process). Running our own accept loop in front would mean a
second server; these subclasses add exactly the missing checks at the points uvicorn already
calls, in about a hundred lines:

- ``connection_made``: writes go out at once (`no_delay`); admit through the gate (per-address and global caps; refused
  connections get a short 429 or 503 and are closed), start the request deadline;
- ``data_received`` with no request in progress: the request deadline runs until the headers
  are in (``on_headers_complete``); an answered connection rests in the idle lane;
- more than ``max_pipelined`` requests queued behind the one being answered: the connection
  is dropped (uvicorn already stops reading while it answers; this bounds one burst);
- each request's cycle writes through `cubby.server.onewrite.OneWrite`: an answer's head goes
  out with its body in one write, not two;
- ``X-Forwarded-For`` from a trusted proxy: the connection is counted under the client's
  address from its first request on (`cubby.server.peers`);
- WebSocket: every frame from the client restarts the idle deadline; the socket's write
  buffer is capped, so a client that sends pings and never reads the pongs (or never reads
  its notifications) is dropped instead of growing the process. The handshake and the
  framing rules (RFC 6455: RSV bits, control frames, continuation, masking, UTF-8 -> 1007)
  are the ``websockets`` package's, which uvicorn's ``websockets-sansio`` protocol runs.

A response being written to a slow reader is uvicorn's own flow control (it waits for the
socket to drain); a request body being received is `cubby.server.bodies`'s business.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, MutableMapping
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from cubby.server.bodies import allow_frame_sink
from cubby.server.budget import allow_abort
from cubby.server.framesink import FrameSink
from cubby.server.gate import ConnectionGate
from cubby.server.onewrite import OneWrite


def refusal(reason: str) -> bytes:
    """A complete HTTP answer that says why a connection is closed before its request."""
    if reason == "full":
        code, status = "unavailable", b"503 Service Unavailable"
    else:
        code, status = "too_many_requests", b"429 Too Many Requests"
    message = {
        "too_many_from_address": "too many connections from this address; retry later",
        "full": "the server is at its connection limit; retry later",
        "pipelined": "too many pipelined requests",
    }.get(reason, reason)
    body = b'{"code":"%s","message":"%s"}' % (code.encode(), message.encode())
    return (
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (status, len(body), body)
    )


class Slot:
    """One admitted connection as the gate sees it: shared by the HTTP protocol and, after an
    upgrade, the WebSocket protocol of the same socket."""

    __slots__ = ("__weakref__", "key", "transport")

    def __init__(self, transport: asyncio.Transport, key: str | None) -> None:
        self.transport = transport
        self.key = key

    def expire(self) -> None:
        self.transport.abort()


class BodyPieces:
    """What uvicorn's cycle holds of a request body not yet received by the app: the pieces
    as the parser handed them over, not copied.

    uvicorn appends each piece to a ``bytearray`` and hands the app ``bytes(bytearray)``: two
    copies of every byte of every body, on the event loop, on top of the parser's own. A 1 GiB
    upload is some 12,000 pieces; with these copies gone, the app gets the parser's ``bytes``
    as they are (one piece, the usual case) or joined once (several that came while it was
    busy). ``bytes()`` of it is what uvicorn's ``receive`` calls."""

    __slots__ = ("pieces", "size")

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.size = 0

    def __iadd__(self, piece: bytes) -> BodyPieces:
        self.pieces.append(piece)
        self.size += len(piece)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)


def content_length(scope: MutableMapping[str, Any]) -> int | None:
    """The request's Content-Length, None if it has none (or a Transfer-Encoding)."""
    length = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            return None
    return length


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a connection that broke a limit."""


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off (TCP_NODELAY) on the connection's socket.

    uvicorn writes an answer's head and body as two writes. With Nagle on, the body waits
    until the client acknowledges the head, and a client's delayed ACK holds that back for up
    to 40 ms: every request on a kept-alive connection took some 45 ms of wall time, whatever
    the server's CPU (measured on loopback; 4-5 ms with the option). uvloop sets it on TCP
    connections itself, but uvicorn wraps a listening socket passed in by descriptor
    (``--fd``, as `cubby serve` under a supervisor or the tests run) as ``AF_UNIX``, so
    uvloop leaves its connections alone. On a real unix socket the call fails, harmlessly."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # a unix socket, or the peer is already gone


def protocols(gate: ConnectionGate) -> tuple[type[asyncio.Protocol], type[asyncio.Protocol]]:
    """The ``http=`` and ``ws=`` protocol classes for ``uvicorn.run``, bound to ``gate``."""
    slots: dict[asyncio.BaseTransport, Slot] = {}

    def release(transport: asyncio.BaseTransport | None) -> None:
        slot = slots.pop(transport, None) if transport is not None else None
        if slot is not None:
            gate.release(slot, slot.key)

    class GuardedHttp(HttpToolsProtocol):
        cubby_refused: str | None = None
        _sink: FrameSink | None = None
        """The sink reading the current request's body, while it does (`take_frames`)."""
        _body_parsed = 0
        """Bytes of the current request's body the parser has handed over."""
        _discarding = False
        """A sink stopped in the middle of a body: nothing more is read from this connection."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            no_delay(transport)
            key = gate.address_key(self.client[0] if self.client else "unknown")
            reason = gate.admit(key)
            if reason is not None:
                self.cubby_refused = reason
                transport.write(refusal(reason))
                transport.close()
                return
            slot = Slot(transport, key)
            slots[transport] = slot
            gate.awaiting_request(slot)

        def connection_lost(self, exc: Exception | None) -> None:
            release(self.transport)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                return  # the rest of a body a sink gave up on: the connection closes after the answer
            slot = slots.get(self.transport)
            if slot is None:
                return  # refused: the answer is on its way, nothing it sends is read
            if self.cycle is None or self.cycle.response_complete:
                gate.awaiting_request(slot)
            super().data_received(data)

        def on_headers_complete(self) -> None:
            slot = slots.get(self.transport)
            if slot is not None and self.client and gate.trusted.trusts(self.client[0]):
                forwarded = next((v.decode("latin-1") for k, v in self.headers if k == b"x-forwarded-for"), None)
                client = gate.trusted.client_address(self.client[0], forwarded)
                if client != self.client[0] and slot.key != client:
                    if not gate.claim(slot.key, client):
                        self._refuse("too_many_from_address")
                    slot.key = client
            if slot is not None:
                allow_abort(cast("MutableMapping[str, Any]", self.scope), slot.expire)  # a body too slow may be closed to make room
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not None and self.cycle is not before:  # a new request's cycle
                self.cycle.transport = OneWrite(self.transport, self.cycle)  # type: ignore[assignment]
                self._body_parsed = 0
                allow_frame_sink(cast("MutableMapping[str, Any]", self.scope), self.take_frames)
            if slot is not None:
                gate.busy(slot)
            if len(self.pipeline) > gate.limits.max_pipelined:
                self._refuse("pipelined")

        def on_body(self, body: bytes) -> None:
            self._body_parsed += len(body)
            cycle = self.cycle
            if cycle is not None and not cycle.body and not isinstance(cycle.body, BodyPieces):
                cycle.body = BodyPieces()  # type: ignore[assignment]  # (uvicorn's empty bytearray)
            super().on_body(body)

        def take_frames(
            self, scope: MutableMapping[str, Any], *, reserve: Callable[[int], bool],
            arrived: Callable[[int], None], max_frame: int,
        ) -> FrameSink | None:
            """Hand the rest of the body of the request of ``scope`` to a `FrameSink` (what
            the parser received of it already first), the connection's transport with it;
            None when this request's body cannot be taken so: it is not the one being read,
            has no Content-Length, or is all in already."""
            cycle = self.cycle
            if (
                cycle is None or cast("MutableMapping[str, Any]", cycle.scope) is not scope
                or cycle.disconnected or cycle.response_complete or not cycle.more_body
                or self._sink is not None or self.transport.is_closing()
            ):
                return None
            declared = content_length(scope)
            if declared is None or declared <= self._body_parsed:
                return None
            if cycle.waiting_for_100_continue:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                cycle.waiting_for_100_continue = False
            pending = bytes(cycle.body)
            cycle.body = bytearray()
            sink = FrameSink(
                self, declared - self._body_parsed, reserve=reserve, arrived=arrived,
                pause=self.flow.pause_reading, resume=self.flow.resume_reading, max_frame=max_frame,
            )
            self._sink = sink
            if pending:
                sink.preload(pending)
            if self._sink is sink:  # (a frame too long in what came before ends it at once)
                self.transport.set_protocol(sink)
                if not sink.paused:
                    self.flow.resume_reading()  # uvicorn may have paused for the body it held
            return sink

        def sink_done(self, sink: FrameSink, *, whole: bool) -> None:
            """`cubby.server.framesink.SinkOwner.sink_done`: the connection is ours again; the
            body ended (the parser starts afresh at the next request, as after any body), or
            the sink stopped in the middle (the answer closes the connection)."""
            if self._sink is not sink:
                return
            self._sink = None
            cycle = self.cycle
            if self.transport.is_closing() or cycle is None:
                return
            self.transport.set_protocol(self)
            if whole:
                self.parser = httptools.HttpRequestParser(self)
                self.on_message_complete()
            else:
                self._discarding = True
                cycle.keep_alive = False
                cycle.more_body = False
                cycle.message_event.set()

        def _refuse(self, reason: str) -> None:
            self.cubby_refused = reason
            raise _Refused(reason)

        def send_400_response(self, msg: str) -> None:
            if self.cubby_refused is None:
                super().send_400_response(msg)
                return
            # Answers to the requests before it may be unwritten: the connection is dropped.
            self.transport.abort()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            slot = slots.get(self.transport)
            if slot is not None and not self.pipeline and not self.transport.is_closing():
                gate.resting(slot)

        def pause_writing(self) -> None:
            super().pause_writing()
            self.flow.pause_reading()  # a client that does not read its answers sends no more

        def resume_writing(self) -> None:
            super().resume_writing()
            if not self.pipeline:
                self.flow.resume_reading()

    class GuardedWebSocket(WebSocketsSansIOProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.transport.set_write_buffer_limits(high=gate.limits.max_buffered_out)
            slot = slots.get(transport)
            if slot is not None:
                gate.resting(slot)

        def connection_lost(self, exc: Exception | None) -> None:
            release(self.transport)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            slot = slots.get(self.transport)
            if slot is not None:
                gate.resting(slot)
            super().data_received(data)

        def pause_writing(self) -> None:
            # Notifications are small: a WebSocket with this much unread is a client that does
            # not read (or answers our pongs with more pings). Drop it rather than hold it.
            super().pause_writing()
            self.transport.abort()

    return GuardedHttp, GuardedWebSocket

