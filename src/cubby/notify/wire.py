"""A lean HTTP/1.1 and WebSocket server for the notification role running on its own.

Why not uvicorn + Starlette here: an idle long-poll under ASGI keeps a task and a chain of
coroutine frames alive (server cycle, middlewares, router, endpoint) plus request and scope
objects: about 21 KB per connection measured (28 KB for a WebSocket), too much for 100,000
connections in 2 GiB. Here a connection is one `asyncio.Protocol` object with slots and an
httptools parser; while it waits, nothing else exists for it but its hub subscription: the hub
writes the answer straight to the transport when a commit or the shared timer wakes it. A
coroutine runs only while a request is being authenticated and checked against the journal
heads (two database reads off the event loop), and ends before the wait.

It serves exactly the notification role's routes, with the same input rules and answers as
`cubby.server.notify` (both use `cubby.notify.protocol`): ``GET /healthz``,
``GET /api/v1/notify``, ``POST /api/v1/notify/longpoll`` and the WebSocket at
``GET /api/v1/notify/ws`` (RFC 6455: text frames, ping/pong, close; no extensions). A client
that disconnects leaves the hub at once.
"""

from __future__ import annotations

import asyncio
import socket
import base64
import hashlib
import json
import logging
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

from cubby.errors import BadRequest, CubbyError, PayloadTooLarge, Unauthorized
from cubby.model import Principal
from cubby.notify import protocol
from cubby.notify.hub import Subscription, Wake
from cubby.notify.service import NotifyService

log = logging.getLogger("cubby.notify")

Authenticate = Callable[[str], Awaitable[Principal]]
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SETUP_WORKERS = 64
"""Requests being authenticated and checked at once; the rest wait in one queue. When a commit
wakes 10,000 long-polls they all come back together: without this bound each would hold a
coroutine, a thread-pool job and its buffers at the same time, and the process keeps the
memory of that peak long after."""
MAX_HEADER_BYTES = 16 * 1024
REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found", 405: b"Method Not Allowed",
           413: b"Payload Too Large", 426: b"Upgrade Required", 500: b"Internal Server Error",
           503: b"Service Unavailable"}


def _json(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + payload


def _unmask(data: bytes, mask: bytes) -> bytes:
    if not data:
        return data
    key = int.from_bytes((mask * (len(data) // 4 + 1))[: len(data)], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(len(data), "big")


class WireServer:
    """Shared state of all connections: the service (hub + broker), how to authenticate."""

    def __init__(self, service: NotifyService, authenticate: Authenticate) -> None:
        self.service = service
        self.authenticate = authenticate
        self.connections = 0
        self._last_wake: Wake | None = None
        self._last_frame = b""
        self._jobs: deque[Callable[[], Awaitable[None]]] = deque()
        self._workers = 0

    def submit(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` (a request's setup: authentication, database reads) on one of at most
        `SETUP_WORKERS` shared worker tasks."""
        self._jobs.append(job)
        if self._workers < SETUP_WORKERS:
            self._workers += 1
            asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        try:
            while self._jobs:
                job = self._jobs.popleft()
                try:
                    await job()
                except Exception:  # jobs answer their own errors; this is a last resort
                    log.exception("a notification request failed")
        finally:
            self._workers -= 1

    def changed_frame(self, wake: Wake) -> bytes:
        """The WebSocket frame for ``wake``, encoded once for all the subscribers it wakes."""
        if wake is not self._last_wake:
            self._last_wake = wake
            self._last_frame = ws_frame(_json({"type": "changed", "heads": protocol.heads_json(wake.heads)}))
        return self._last_frame

    def factory(self) -> "Connection":
        return Connection(self)


class Connection(asyncio.Protocol):
    """One client connection: an HTTP request at a time, or a WebSocket after the upgrade."""

    __slots__ = (
        "srv", "transport", "parser", "url", "auth", "upgrade", "ws_key", "body", "hsize",
        "busy", "sub", "ws", "buf", "token", "principal", "cursor_heads", "frag", "closed",
    )

    def __init__(self, srv: WireServer) -> None:
        self.srv = srv
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.url = b""
        self.auth = ""
        self.upgrade = False
        self.ws_key = b""
        self.body = b""
        self.hsize = 0
        self.busy = False
        self.sub: Subscription | None = None
        self.ws = False
        self.buf = b""
        self.token = ""
        self.principal: Principal | None = None
        self.cursor_heads: dict[int, int] | None = None
        self.frag = b""
        self.closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.srv.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.srv.connections -= 1
        self._drop()
        self.parser = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.ws:
            self._ws_data(data)
            return
        if self.parser is None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            self._start_websocket(data[offset:])
        except httptools.HttpParserError as exc:
            # An error raised in a parser callback (a size cap) arrives wrapped.
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, CubbyError):
                self._send_error(cause, close=True)
            else:
                self._send_error(BadRequest(f"malformed HTTP request: {exc}", code="bad_http"), close=True)
        except CubbyError as exc:
            self._send_error(exc, close=True)

    # -- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url, self.auth, self.upgrade, self.ws_key, self.body, self.hsize = b"", "", False, b"", b"", 0

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
        elif lname == b"upgrade" and value.lower() == b"websocket":
            self.upgrade = True
        elif lname == b"sec-websocket-key":
            self.ws_key = value.strip()

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > protocol.MAX_BODY:
            raise PayloadTooLarge(f"the body is larger than the {protocol.MAX_BODY}-byte limit")
        self.body += body

    def on_message_complete(self) -> None:
        if self.upgrade:
            return  # the upgrade is taken over when feed_data raises HttpParserUpgrade
        assert self.parser is not None
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if self.busy:
            self._send_error(BadRequest("one request at a time on a connection", code="pipelining"), close=True)
            return
        if path == b"/healthz" and method == b"GET":
            self._respond(200, {"status": "ok", "roles": ["notify"]})
        elif path == b"/api/v1/notify" and method == b"GET":
            hub = self.srv.service.hub
            self._respond(200, protocol.info(hub.count, len(hub.namespaces()), self.srv.service.resyncs))
        elif path == b"/api/v1/notify/longpoll":
            if method != b"POST":
                self._respond(405, {"code": "method_not_allowed", "message": "use POST"})
                return
            self.busy = True
            auth, body = self.auth, self.body
            self.auth, self.body, self.url = "", b"", b""
            self.srv.submit(lambda: self._longpoll(auth, body))
        elif path == b"/api/v1/notify/ws":
            self._respond(426, {"code": "upgrade_required", "message": "open this route as a WebSocket"})
        else:
            self._respond(404, {"code": "not_found", "message": f"no route {path.decode('latin-1')!r} here"})

    # -- HTTP answers ---------------------------------------------------------------------------
    def _respond(self, status: int, body: dict[str, Any], *, close: bool = False, extra: bytes = b"") -> None:
        if self.transport is None or self.closed:
            return
        data = _json(body)
        keep = not close and self.parser is not None and self.parser.should_keep_alive()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s%s\r\n%s"
            % (status, REASONS.get(status, b"Error"), len(data), extra,
               b"" if keep else b"connection: close\r\n", data)
        )
        if not keep:
            self.transport.close()

    def _send_error(self, exc: CubbyError, *, close: bool = False) -> None:
        extra = b"www-authenticate: Bearer\r\n" if exc.status == 401 else b""
        if exc.retryable:
            extra += b"retry-after: 1\r\n"
        self._respond(exc.status, exc.to_dict(), close=close, extra=extra)

    # -- long-poll ------------------------------------------------------------------------------
    async def _longpoll(self, auth: str, raw: bytes) -> None:
        try:
            p = await self.srv.authenticate(protocol.bearer(auth))
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadRequest(f"the body is not valid JSON: {exc}", code="malformed_json") from exc
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object", code="malformed_json")
            cursor = protocol.parse_cursor(body.get("cursor"), p)
            timeout = protocol.parse_timeout(body.get("timeout"))
            service = self.srv.service
            await service.ensure_started()
            if self.closed:
                return
            self.principal = p
            sub = Subscription(p.user_id, dict(cursor), self._wake_longpoll, oneshot=True)
            # Registered before the heads are read: a commit shows in the heads or wakes `sub`.
            service.hub.add(sub, timeout=protocol.jittered(timeout))
            self.sub = sub
            try:
                heads = await service.check(cursor)
            except CubbyError:
                service.hub.remove(sub)
                self.sub = None
                raise
            if self.sub is not sub:
                return  # woken (and answered) while the heads were read
            moved = {ns: h for ns, h in heads.items() if h > cursor[ns]}
            if moved:
                service.hub.remove(sub)
                self._answer_longpoll(sub, Wake(heads=moved))
        except CubbyError as exc:
            self.busy = False
            self._send_error(exc)
        except Exception:
            log.exception("long-poll failed")
            self.busy = False
            self._respond(500, {"code": "internal", "message": "the server failed to handle this request; it was logged"})

    def _wake_longpoll(self, sub: Subscription, wake: Wake) -> None:
        if self.sub is sub:
            self._answer_longpoll(sub, wake)

    def _answer_longpoll(self, sub: Subscription, wake: Wake) -> None:
        heads = dict(sub.cursor)
        for ns, h in wake.heads.items():
            heads[ns] = max(heads.get(ns, 0), h)
        self.sub = None
        self.busy = False
        p = self.principal
        self.principal = None
        self._respond(200, protocol.longpoll_answer(heads, wake, sorted(p.namespaces) if p else []))

    def _drop(self) -> None:
        if self.sub is not None:
            self.srv.service.hub.remove(self.sub)
            self.sub = None

    # -- WebSocket ------------------------------------------------------------------------------
    def _start_websocket(self, rest: bytes) -> None:
        assert self.transport is not None
        if not self.ws_key:
            self._send_error(BadRequest("missing Sec-WebSocket-Key", code="bad_websocket"), close=True)
            return
        accept = base64.b64encode(hashlib.sha1(self.ws_key + WS_GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-accept: " + accept + b"\r\n\r\n"
        )
        self.ws = True
        self.parser = None
        self.busy = True  # until authenticated
        auth = self.auth
        self.auth = ""
        self.buf = rest
        self.srv.submit(lambda: self._ws_open(auth))

    async def _ws_open(self, auth: str) -> None:
        try:
            self.token = protocol.bearer(auth)
            self.principal = await self.srv.authenticate(self.token)
            await self.srv.service.ensure_started()
        except CubbyError as exc:
            self._ws_send({"type": "error", **exc.to_dict()})
            self._ws_close(4401 if isinstance(exc, Unauthorized) else 4503)
            return
        self.busy = False
        if self.buf:
            data, self.buf = self.buf, b""
            self._ws_data(data)

    def _ws_send(self, message: dict[str, Any]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(ws_frame(_json(message)))

    def _ws_close(self, code: int) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(ws_frame(code.to_bytes(2, "big"), 0x8))
            self.transport.close()
        self._drop()

    def _ws_data(self, data: bytes) -> None:
        self.buf += data
        if self.busy:
            return  # handled when the current message is done
        while len(self.buf) >= 2:
            b0, b1 = self.buf[0], self.buf[1]
            fin, opcode, masked, n = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            off = 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, off = int.from_bytes(self.buf[2:4], "big"), 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, off = int.from_bytes(self.buf[2:10], "big"), 10
            if not masked:
                self._ws_close(1002)  # clients must mask their frames
                return
            if n + len(self.frag) > protocol.MAX_BODY:
                self._ws_close(1009)
                return
            if len(self.buf) < off + 4 + n:
                return
            mask = self.buf[off : off + 4]
            payload = _unmask(self.buf[off + 4 : off + 4 + n], mask)
            self.buf = self.buf[off + 4 + n :]
            if opcode == 0x8:
                self._ws_close(1000)
                return
            if opcode == 0x9:
                if self.transport is not None:
                    self.transport.write(ws_frame(payload, 0xA))
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x0, 0x1, 0x2):
                self.frag += payload
                if not fin:
                    continue
                message, self.frag = self.frag, b""
                self.busy = True
                self.srv.submit(lambda m=message: self._ws_message(m))  # type: ignore[misc]
                return
            self._ws_close(1002)
            return

    async def _ws_message(self, raw: bytes) -> None:
        try:
            await self._ws_subscribe(raw)
        except CubbyError as exc:
            self._ws_send({"type": "error", **exc.to_dict()})
        except Exception:
            log.exception("WebSocket message failed")
            self._ws_close(1011)
            return
        self.busy = False
        if self.buf and not self.closed:
            self._ws_data(b"")

    async def _ws_subscribe(self, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the message is not valid JSON: {exc}", code="malformed_json") from exc
        if not isinstance(body, dict):
            raise BadRequest('a message must be a JSON object {"cursor": {...}}', code="malformed_json")
        assert self.principal is not None
        cursor = protocol.parse_cursor(body.get("cursor"), self.principal)
        hub = self.srv.service.hub
        self._drop()
        sub = Subscription(self.principal.user_id, dict(cursor), self._wake_ws, oneshot=False)
        hub.add(sub)
        try:
            heads = await self.srv.service.check(cursor)
        except CubbyError:
            hub.remove(sub)
            raise
        if self.closed:
            hub.remove(sub)
            return
        self.sub = sub
        moved = {ns: h for ns, h in heads.items() if h > cursor[ns]}
        for ns, h in moved.items():
            sub.cursor[ns] = max(sub.cursor[ns], h)
        self._ws_send({"type": "subscribed", "heads": protocol.heads_json(heads), "changed": bool(moved)})

    def _wake_ws(self, sub: Subscription, wake: Wake) -> None:
        if wake.account_changed:
            self.srv.submit(self._ws_reauthenticate)
        elif wake.heads and self.transport is not None and not self.closed:
            self.transport.write(self.srv.changed_frame(wake))

    async def _ws_reauthenticate(self) -> None:
        """The account's namespaces changed: drop those it may no longer read and tell the
        client, or close with 4401 if the token no longer works."""
        try:
            p = await self.srv.authenticate(self.token)
        except Unauthorized as exc:
            self._ws_send({"type": "error", **exc.to_dict()})
            self._ws_close(4401)
            return
        except CubbyError:
            return
        self.principal = p
        revoked: list[int] = []
        sub = self.sub
        if sub is not None and sub.active:
            revoked = [ns for ns in sub.cursor if not p.can_read(ns)]
            if revoked:
                hub = self.srv.service.hub
                hub.remove(sub)
                for ns in revoked:
                    del sub.cursor[ns]
                if sub.cursor:
                    hub.add(sub)
                else:
                    self.sub = None
        self._ws_send({"type": "account_changed", "revoked": revoked})


async def serve(
    service: NotifyService, authenticate: Authenticate, host: str, port: int, *, sock: socket.socket | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; then close the listening socket and every connection.
    ``sock``, an already-bound listening socket, is used instead of binding ``host:port``."""
    loop = asyncio.get_running_loop()
    srv = WireServer(service, authenticate)
    if sock is not None:
        server = await loop.create_server(srv.factory, sock=sock, backlog=4096)
    else:
        server = await loop.create_server(srv.factory, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        service.hub.close()
        try:
            await asyncio.wait_for(service.broker.close(), 3)
        except (TimeoutError, Exception):
            pass
