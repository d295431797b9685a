"""One client connection of the lean front: bytes in and out, held to the gate's limits.

A `Connection` is an `asyncio.Protocol` with slots: it parses HTTP/1.1 with httptools, and after
a checked upgrade hands frames to the ``websockets`` sans-I/O protocol (`.websocket`). What it
does with a complete request or message is the `Handler`'s business (`.endpoints`); here are
only the rules every connection obeys:

- **deadlines** (`cubby.server.gate`): a request's headers *and body* must arrive within the
  header timeout (notification bodies are a cursor, small and sent at once); a connection
  between requests, or a WebSocket between frames, is closed after the idle timeout;
- **input**: one request at a time; a body is capped per request and, across all connections,
  by the gate's budget of bytes in flight; while a WebSocket message is being handled, at most
  one more chunk is buffered and reading stops;
- **output**: when the socket's write buffer passes its high-water mark reading stops (a client
  that does not read its answers sends nothing more: no more pongs, no more answers), and a
  connection with more than ``max_buffered_out`` bytes unread is dropped;
- **WebSocket**: the handshake is checked (GET, the WebSocket route only, the right headers),
  framing errors close with the library's code; a hostile ``Upgrade`` elsewhere gets 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

import httptools
from websockets.frames import Opcode

from cubby.errors import BadRequest, CubbyError, PayloadTooLarge, TooManyRequests, Unavailable
from cubby.model import Principal
from cubby.notify import protocol
from cubby.notify.hub import Subscription, Wake
from cubby.notify.wire import websocket
from cubby.server.gate import ConnectionGate

log = logging.getLogger("cubby.notify")

MAX_HEADER_BYTES = 16 * 1024
WS_PATH = b"/api/v1/notify/ws"
REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found", 405: b"Method Not Allowed",
           413: b"Payload Too Large", 421: b"Misdirected Request", 426: b"Upgrade Required", 429: b"Too Many Requests",
           500: b"Internal Server Error", 503: b"Service Unavailable"}
KEPT_HEADERS = websocket.HANDSHAKE_HEADERS | {b"x-forwarded-for", b"host"}  # host: discovery's own address


def encode_json(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


class Handler(Protocol):
    """What the front does with complete requests and messages (`.endpoints.Endpoints`).
    Each method runs on the event loop and must not block; slow work is submitted to a worker,
    and the handler calls `Connection.done` when the connection may take its next input."""

    def request(self, conn: Connection, method: bytes, path: bytes) -> None: ...

    def ws_opened(self, conn: Connection) -> None: ...

    def ws_message(self, conn: Connection, data: bytes) -> None: ...

    def wake(self, conn: Connection, sub: Subscription, wake: Wake) -> None: ...

    def dropped(self, conn: Connection) -> None: ...


class Connection(asyncio.Protocol):
    """One client connection: an HTTP request at a time, or a WebSocket after the upgrade.
    The handler keeps its per-connection state (``sub``, ``principal``, ``token``,
    ``waiting``) in slots here, so that an idle subscriber is this one object."""

    __slots__ = (
        "auth",
        "body",
        "busy",
        "closed",
        "counted",
        "gate",
        "handler",
        "headers",
        "held",
        "hsize",
        "key",
        "message",
        "parser",
        "paused",
        "pending",
        "principal",
        "queued",
        "sub",
        "text",
        "token",
        "transport",
        "upgraded",
        "url",
        "waiting",
        "ws",
    )

    def __init__(self, handler: Handler, gate: ConnectionGate) -> None:
        self.handler = handler
        self.gate = gate
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.key: str | None = None
        self.url = b""
        self.auth = ""
        self.headers: dict[bytes, bytes] | None = None
        self.body = bytearray()
        """Grown in place: ``bytes +=`` made a new object of every intermediate size, whose
        freed copies the server's malloc keeps (`cubby.core.malloc`), so a flood of slow
        bodies grew the process well past the gate's budget of bytes in flight."""
        self.hsize = 0
        self.held = 0
        """Bytes of the gate's in-flight budget this connection's body holds."""
        self.busy = False
        self.upgraded = False
        """A WebSocket since the handshake."""
        self.ws: websocket.Protocol | None = None
        """The framing state while a frame is in progress; None between frames (see `_ws_data`)."""
        self.pending = b""
        self.paused = 0
        """Why reading is paused: bit 1 the client does not read, bit 2 a message is handled."""
        self.closed = False
        self.counted = False
        """Admitted by the gate (and so to be released by it)."""
        self.sub: Subscription | None = None
        self.token = ""
        self.principal: Principal | None = None
        self.waiting = 0
        """What this connection is counted under as a waiting one (`TokenWaits.key`; 0: none)."""
        self.message: bytearray | None = None
        self.text = False
        self.queued: list[bytes] | None = None
        """Whole messages that came in one read behind the one being handled."""

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.key = self.gate.address_key(str(peer[0]) if peer else "unknown")
        refused = self.gate.admit(self.key)
        if refused is not None:
            self.closed = True  # never counted: connection_lost must not release it
            self.key = None
            exc: CubbyError = Unavailable("the server is at its connection limit; retry later") \
                if refused == "full" else TooManyRequests("too many connections from this address; retry later")
            body = encode_json(exc.to_dict())
            transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%s" % (exc.status, REASONS[exc.status], len(body), body)
            )
            transport.close()
            return
        self.counted = True
        self.gate.awaiting_request(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.counted:
            self.counted = False
            self.gate.release(self, self.key)
        self._give_back()
        self.handler.dropped(self)
        self.parser = None
        self.ws = None
        self.transport = None

    def pause_writing(self) -> None:
        self._pause(1)

    def resume_writing(self) -> None:
        self._resume(1)

    def wake(self, sub: Subscription, wake: Wake) -> None:
        """The hub's delivery callback (a bound method: no closure per subscription)."""
        self.handler.wake(self, sub, wake)

    def expire(self) -> None:
        """A deadline passed (or the gate needs the slot): drop the connection."""
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.gate.resting(self)
            if self.busy or self.queued:
                self.pending += data
                self._pause(2)
                return
            self._ws_data(data)
            return
        if self.parser is None or self.closed:
            return
        if not self.busy:
            self.gate.awaiting_request(self)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            self._upgrade(data[offset:])
        except httptools.HttpParserError as exc:
            # An error raised in a parser callback (a size cap) arrives wrapped.
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, CubbyError):
                self.send_error(cause, close=True)
            else:
                self.send_error(BadRequest(f"malformed HTTP request: {exc}", code="bad_http"), close=True)

    # -- reading pauses -----------------------------------------------------------------------
    def _pause(self, why: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= why

    def _resume(self, why: int) -> None:
        was = self.paused
        self.paused &= ~why
        if was and not self.paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url, self.auth, self.headers, self.body, self.hsize = b"", "", None, bytearray(), 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_HEADER_BYTES:
            raise PayloadTooLarge("the request URL is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.hsize += len(name) + len(value)
        if self.hsize > MAX_HEADER_BYTES:
            raise PayloadTooLarge("request headers are too large")
        lname = name.lower()
        if lname == b"authorization":
            self.auth = value.decode("latin-1")
        elif lname in KEPT_HEADERS:
            if self.headers is None:
                self.headers = {}
            self.headers[lname] = value

    def on_headers_complete(self) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        if peer and self.headers and b"x-forwarded-for" in self.headers and self.gate.trusted.trusts(str(peer[0])):
            client = self.gate.trusted.client_address(str(peer[0]), self.headers[b"x-forwarded-for"].decode("latin-1"))
            if client != self.key:
                if not self.gate.claim(self.key, client):
                    raise TooManyRequests("too many connections from this address; retry later")
                self.key = client

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > protocol.MAX_BODY:
            raise PayloadTooLarge(f"the body is larger than the {protocol.MAX_BODY}-byte limit")
        if not self.gate.reserve(len(body)):
            raise Unavailable("the server is receiving too many request bodies; retry later")
        self.held += len(body)
        self.body += body

    def on_message_complete(self) -> None:
        assert self.parser is not None
        if self.parser.should_upgrade():
            return  # taken over (or refused) when feed_data raises HttpParserUpgrade
        self._give_back()
        if self.busy:
            raise BadRequest("one request at a time on a connection", code="pipelining")
        self.gate.busy(self)
        self.handler.request(self, self.parser.get_method(), self.url.split(b"?", 1)[0])

    def _give_back(self) -> None:
        if self.held:
            self.gate.give_back(self.held)
            self.held = 0

    # -- HTTP answers ---------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue ``data`` for the client; drop a client that has left too much unread."""
        if self.transport is None or self.closed:
            return
        self.transport.write(data)
        if self.transport.get_write_buffer_size() > self.gate.limits.max_buffered_out:
            self.transport.abort()

    def respond(
        self, status: int, body: dict[str, Any] | bytes, *, close: bool = False, extra: bytes = b"",
        content_type: bytes = b"application/json",
    ) -> None:
        """Answer the current request; the connection then rests until the next one."""
        if self.transport is None or self.closed:
            return
        data = body if isinstance(body, bytes) else encode_json(body)
        keep = not close and self.parser is not None and self.parser.should_keep_alive()
        self.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n%s"
            % (status, REASONS.get(status, b"Error"), content_type, len(data), extra,
               b"" if keep else b"connection: close\r\n", data)
        )
        if not keep:
            self._close()
        else:
            self.gate.resting(self)

    def send_error(self, exc: CubbyError, *, close: bool = False) -> None:
        extra = b"www-authenticate: Bearer\r\n" if exc.status == 401 else b""
        if exc.retryable:
            extra += b"retry-after: 1\r\n"
        self.respond(exc.status, exc.to_dict(), close=close, extra=extra)

    def _close(self) -> None:
        """Close once what is queued is written; a client that never reads it is dropped at
        the idle deadline."""
        if self.transport is not None and not self.closed:
            self.transport.close()
            self.gate.resting(self)

    # -- WebSocket ------------------------------------------------------------------------------
    def _upgrade(self, rest: bytes) -> None:
        assert self.parser is not None
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        try:
            if path != WS_PATH:
                raise BadRequest(f"no WebSocket at {path.decode('latin-1')!r}", code="bad_websocket")
            answer = websocket.accept(method, self.headers or {})
        except CubbyError as exc:
            self.send_error(exc, close=True)
            return
        self.write(answer)
        self.upgraded = True
        self.parser = None
        self.headers = None
        self.url = b""
        self.busy = True  # until authenticated
        self.pending = rest
        self.gate.resting(self)
        self.handler.ws_opened(self)

    def done(self) -> None:
        """The handler finished with the current input: take the next."""
        self.busy = False
        if self.closed:
            return
        if self.upgraded:
            if self.queued:
                self._next_message()
                return
            data, self.pending = self.pending, b""
            self._resume(2)
            if data:
                self._ws_data(data)

    def _ws_data(self, data: bytes) -> None:
        """Feed ``data`` to the framing state, created for it if the connection was at rest.
        Between frames the state is dropped (`websocket.at_rest`): an idle subscriber then
        holds no framing object at all, which keeps it at a few KB."""
        ws = self.ws
        if ws is None:
            ws = self.ws = websocket.server_protocol(protocol.MAX_BODY)
        ws.receive_data(data)
        for frame in ws.events_received():
            if not isinstance(frame, websocket.Frame):
                continue
            # The library checks the order of data and continuation frames, not the text.
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                self.message, self.text = bytearray(frame.data), frame.opcode is Opcode.TEXT
            elif frame.opcode is Opcode.CONT and self.message is not None:
                self.message += frame.data
            else:
                continue  # ping (answered by the library), pong, close
            if frame.fin and self.message is not None:
                message, self.message = bytes(self.message), None
                if self.text:
                    try:
                        message.decode("utf-8")
                    except UnicodeDecodeError:
                        ws.fail(1007, "invalid UTF-8 in a text message")
                        break
                if self.queued is None:
                    self.queued = []
                self.queued.append(message)
        self._ws_flush()
        if self.message is None and websocket.at_rest(ws):
            self.ws = None
        self._next_message()

    def _next_message(self) -> None:
        if self.busy or not self.queued or self.closed:
            return
        message = self.queued.pop(0)
        if not self.queued:
            self.queued = None
        self.busy = True
        self.handler.ws_message(self, message)

    def _ws_flush(self) -> None:
        ws = self.ws
        if ws is None:
            return
        for chunk in ws.data_to_send():
            if chunk:
                self.write(chunk)
            else:
                self._close()

    def _ws_open(self) -> bool:
        """Whether the server may still send messages: upgraded, neither side closing."""
        return (
            self.upgraded and not self.closed and self.transport is not None and not self.transport.is_closing()
            and (self.ws is None or self.ws.state is websocket.State.OPEN)
        )

    def ws_send(self, message: dict[str, Any]) -> None:
        if self._ws_open():
            self.write(websocket.text_frame(encode_json(message)))

    def ws_send_frame(self, frame: bytes) -> None:
        """Write a text frame encoded once for many connections (`websocket.text_frame`)."""
        if self._ws_open():
            self.write(frame)

    def ws_close(self, code: int, reason: str = "") -> None:
        if self._ws_open():
            self.write(websocket.close_frame(code, reason))
        self._close()
