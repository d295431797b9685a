"""The notification role: long-poll and WebSocket subscriptions to namespace changes.

A client sends its cursor (namespace id -> last journal id it has read) and is told as soon as
any of those namespaces moves past it; it then reads the journal from the metadata role as
before. Both transports are authenticated like every request, and a cursor may only name
namespaces the token can read (others answer 404 ``not_found``, as everywhere).

- ``POST /api/v1/notify/longpoll`` ``{"cursor": {ns: jid}, "timeout": 30..480}`` answers
  ``{"changed", "heads", "account_changed", "namespaces", "backoff"}`` (``namespaces``: all the
  token can read, so a client notices one it does not follow yet) when something moved or after the
  timeout less a random jitter (so that clients do not come back in step).
- ``GET /api/v1/notify/ws`` (WebSocket): the client sends ``{"cursor": {...}}`` (again whenever
  it likes, to replace it); the server answers ``{"type": "subscribed", "heads", "changed"}``
  and then sends ``{"type": "changed", "heads"}`` for every namespace that moves,
  ``{"type": "account_changed", "revoked": [ns...]}`` when the account's namespaces change,
  and ``{"type": "error", "code", "message"}`` for bad input. The server sends no pings (no
  per-connection timers); clients ping to keep middleboxes awake.

This role needs the metadata database (tokens and journal heads) and the broker, never the
block store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from cubby.errors import CubbyError, TooManyRequests, Unauthorized
from cubby.metadata.base import MetadataStore
from cubby.model import Principal
from cubby.notify.hub import Subscription, Wake
from cubby.notify.memory import MemoryBroker
from cubby.notify.protocol import (
    MAX_BODY,
    TokenWaits,
    bearer,
    heads_json,
    jittered,
    json_object,
    longpoll_answer,
    parse_cursor,
    parse_timeout,
)
from cubby.notify.protocol import (
    info as info_body,
)
from cubby.notify.service import HeadsReader, NotifyService
from cubby.server import access, discovery
from cubby.server.bodies import json_body
from cubby.server.context import ServerContext
from cubby.server.gate import ConnectionGate

log = logging.getLogger("cubby.notify")


def heads_reader(store: MetadataStore) -> HeadsReader:
    """Journal heads of many namespaces (`MetadataStore.heads`), off the event loop."""

    async def reader(ids: Collection[int]) -> dict[int, int]:
        return await run_in_threadpool(store.heads, list(ids))

    return reader


class WsOutbox:
    """One sender task for all WebSocket connections: the hub queues (connection, message)
    and this drains the queue, so a fan-out to 10,000 sockets creates no task per socket."""

    def __init__(self) -> None:
        self._queue: deque[tuple[WebSocket, str]] = deque()
        self._task: asyncio.Task[None] | None = None

    def put(self, ws: WebSocket, message: dict[str, Any]) -> None:
        self._queue.append((ws, json.dumps(message, separators=(",", ":"))))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._queue:
            ws, text = self._queue.popleft()
            with contextlib.suppress(Exception):  # the connection went away; its handler cleans up
                await ws.send_text(text)


class WsConnection:
    """What one WebSocket connection holds between messages."""

    __slots__ = ("authenticate", "principal", "sub", "ws")

    def __init__(self, ws: WebSocket, authenticate: Callable[[], Principal], principal: Principal) -> None:
        self.ws = ws
        self.authenticate = authenticate
        """Checks the connection's credential again (a token or a browser session)."""
        self.principal = principal
        self.sub: Subscription | None = None


def routes(ctx: ServerContext) -> list[BaseRoute]:
    broker = ctx.broker if ctx.broker is not None else MemoryBroker()
    service = NotifyService(broker, heads_reader(ctx.store), observe_fanout=ctx.metrics.fanout.observe)
    ctx.metrics.watch_notify(lambda: service.hub.count)
    ctx.notify_service = service
    ctx.closers.append(service.hub.close)
    outbox = WsOutbox()

    waits = TokenWaits(ctx.config.max_waits_per_token)

    async def info(request: Request) -> Response:
        if "authorization" not in request.headers:
            return JSONResponse(info_body(None))
        await access.principal(request, ctx)
        return JSONResponse(info_body((service.hub.count, len(service.hub.namespaces()), service.resyncs)))

    async def longpoll(request: Request) -> Response:
        p = await access.principal(request, ctx)
        body = await json_body(request, MAX_BODY)
        cursor = parse_cursor(body.get("cursor"), p)
        timeout = parse_timeout(body.get("timeout"))
        await service.ensure_started()
        held = waits.take(p)
        try:
            heads, wake = await service.wait_once(p.user_id, cursor, jittered(timeout))
        finally:
            waits.give(held)
        if wake.account_changed:
            # A share, a removal or a revoked token: a dead token gets 401 now.
            p = await access.principal(request, ctx)
        return JSONResponse(longpoll_answer(heads, wake, sorted(p.namespaces)))

    def ws_deliver(conn: WsConnection) -> Callable[[Subscription, Wake], None]:
        def deliver(sub: Subscription, wake: Wake) -> None:
            if wake.account_changed:
                asyncio.get_running_loop().create_task(reauthenticate(conn))
            elif wake.heads:
                outbox.put(conn.ws, {"type": "changed", "heads": heads_json(wake.heads)})

        return deliver

    async def reauthenticate(conn: WsConnection) -> None:
        """The account's namespaces changed: drop those it may no longer read, tell the client
        (which re-reads its account and sends a new cursor), or close if the token died."""
        try:
            p = await run_in_threadpool(conn.authenticate)
        except Unauthorized as exc:
            await close_revoked(conn, exc)
            return
        conn.principal = p
        revoked = service.hub.narrow(conn.sub, p.can_read) if conn.sub is not None else []
        outbox.put(conn.ws, {"type": "account_changed", "revoked": revoked})

    async def close_revoked(conn: WsConnection, exc: Unauthorized) -> None:
        if conn.sub is not None:
            service.hub.remove(conn.sub)
            conn.sub = None
        await send_error(conn.ws, exc)
        await conn.ws.close(code=4401)

    async def send_error(ws: WebSocket, exc: CubbyError) -> None:
        with contextlib.suppress(Exception):  # the connection went away
            await ws.send_text(json.dumps({"type": "error", **exc.to_dict()}))

    async def subscribe_ws(conn: WsConnection, text: str) -> None:
        body = json_object(text, "a message")
        # Read afresh: a token revoked, or a member removed, while no broker message could
        # reach this process must not subscribe again.
        conn.principal = await run_in_threadpool(conn.authenticate)
        cursor = parse_cursor(body.get("cursor"), conn.principal)
        if conn.sub is not None:
            service.hub.remove(conn.sub)
            conn.sub = None
        sub = Subscription(conn.principal.user_id, dict(cursor), ws_deliver(conn), oneshot=False)
        service.hub.add(sub)
        try:
            heads = await service.check(cursor)
        except CubbyError:
            service.hub.remove(sub)
            raise
        conn.sub = sub
        moved = {ns: h for ns, h in heads.items() if h > cursor[ns]}
        for ns, h in moved.items():
            sub.cursor[ns] = max(sub.cursor[ns], h)
        outbox.put(conn.ws, {"type": "subscribed", "heads": heads_json(heads), "changed": bool(moved)})

    def ws_credential(ws: WebSocket) -> Callable[[], Principal]:
        """How this connection proves who it is, again at every account change: its bearer
        token, or (a browser, which cannot set headers on a WebSocket) its session cookie,
        accepted only from this server's own pages (`sessions.same_origin`)."""
        header = ws.headers.get("authorization", "")
        if not header and ws.cookies:
            from cubby.server import sessions

            found = sessions.cookie_principal(ws, ctx)
            if found is not None:
                secret = found[1]
                return lambda: ctx.store.accounts.authenticate(secret)[0]
        token = bearer(header)
        return lambda: ctx.store.authenticate(token)

    async def ws_endpoint(ws: WebSocket) -> None:
        await ws.accept()
        try:
            authenticate = await run_in_threadpool(ws_credential, ws)
            p = await run_in_threadpool(authenticate)
            await service.ensure_started()
            held = waits.take(p)
        except CubbyError as exc:
            await send_error(ws, exc)
            await ws.close(code=4401 if isinstance(exc, Unauthorized) else 4429 if isinstance(exc, TooManyRequests) else 4503)
            return
        conn = WsConnection(ws, authenticate, p)
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                text = msg.get("text")
                if text is None:
                    text = (msg.get("bytes") or b"").decode("utf-8", "replace")
                try:
                    await subscribe_ws(conn, text)
                except Unauthorized as exc:
                    await close_revoked(conn, exc)
                    break
                except CubbyError as exc:
                    outbox.put(ws, {"type": "error", **exc.to_dict()})
        except WebSocketDisconnect:
            pass
        finally:
            waits.give(held)
            if conn.sub is not None:
                service.hub.remove(conn.sub)

    return [
        Route("/api/v1/notify", info, methods=["GET"]),
        Route("/api/v1/notify/longpoll", longpoll, methods=["POST"]),
        WebSocketRoute("/api/v1/notify/ws", ws_endpoint),
    ]


def serve_lean(ctx: ServerContext, gate: ConnectionGate) -> None:
    """Run the notification role alone on the lean server (`cubby.notify.wire`) instead of
    uvicorn + Starlette: same routes and answers, a fraction of the memory per connection."""
    from cubby.notify import wire

    async def main() -> None:
        broker = ctx.broker if ctx.broker is not None else MemoryBroker()
        service = NotifyService(broker, heads_reader(ctx.store), observe_fanout=ctx.metrics.fanout.observe)
        ctx.metrics.watch_notify(lambda: service.hub.count)
        ctx.notify_service = service

        async def authenticate(token: str) -> Principal:
            return await run_in_threadpool(ctx.store.authenticate, token)

        sock = socket.socket(fileno=ctx.config.listen_fd) if ctx.config.listen_fd is not None else None
        await wire.serve(
            service, authenticate, ctx.config.host, ctx.config.port, gate,
            max_waits=ctx.config.max_waits_per_token, sock=sock, advertised=discovery.advertised(ctx.config),
            metrics=ctx.metrics.exposition,
        )

    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(main())
    finally:
        ctx.close()
