"""The notification routes of the lean front, with the same input rules and answers as
`cubby.server.notify` (both use `cubby.notify.protocol`):

- ``GET /healthz``;
- ``GET /api/v1/notify``: what the role offers; subscriber counts only with a valid token;
- ``POST /api/v1/notify/longpoll``;
- ``GET /api/v1/notify/ws`` (WebSocket; the handshake and framing are `.connection`'s).

Revocation: a token revoked, or an account whose namespaces changed, arrives as a user topic on
the broker (`Hub.account_changed`); each of that user's waiting connections re-authenticates
its own token: a dead one answers 401 (long-poll) or closes with 4401 (WebSocket), a live one
loses the namespaces it may no longer read. A WebSocket also re-authenticates on every
subscribe message, so a token revoked while the broker was down cannot subscribe again.
One token holds at most ``max_waits`` waiting connections; the next gets 429.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from cubby.errors import CubbyError, TooManyRequests, Unauthorized, WrongRole
from cubby.model import Principal
from cubby.notify import protocol
from cubby.notify.hub import Subscription, Wake
from cubby.notify.service import NotifyService
from cubby.notify.wire import websocket
from cubby.notify.wire.connection import Connection, encode_json
from cubby.roles import ROLES, role_for_path

log = logging.getLogger("cubby.notify")

Authenticate = Callable[[str], Awaitable[Principal]]
SETUP_WORKERS = 64
"""Requests being authenticated and checked at once; the rest wait in one queue. When a commit
wakes 10,000 long-polls they all come back together: without this bound each would hold a
coroutine, a thread-pool job and its buffers at the same time, and the process keeps the
memory of that peak long after."""


class Endpoints:
    """Shared state of all connections: the service (hub + broker), how to authenticate, the
    setup workers and the count of waiting connections per token."""

    def __init__(
        self, service: NotifyService, authenticate: Authenticate, *, max_waits: int = 32,
        advertised: dict[str, str | None] | None = None, metrics: Callable[[], bytes] | None = None,
    ) -> None:
        self.metrics = metrics
        """The process's Prometheus exposition (`cubby.server.metrics.Metrics.exposition`)."""
        self.advertised = advertised or {}
        """Addresses of the roles as the operator advertises them (`cubby.server.discovery`)."""
        self.service = service
        self.authenticate = authenticate
        self.waits = protocol.TokenWaits(max_waits)
        self._last_wake: Wake | None = None
        self._last_frame = b""
        self._jobs: deque[Callable[[], Awaitable[None]]] = deque()
        self._workers = 0

    # -- setup workers ----------------------------------------------------------------------
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
            self._last_frame = websocket.text_frame(
                encode_json({"type": "changed", "heads": protocol.heads_json(wake.heads)})
            )
        return self._last_frame

    # -- waiting connections per token -------------------------------------------------------
    def hold(self, conn: Connection, p: Principal) -> None:
        """Count ``conn`` as one of ``p``'s token's waiting connections, or raise 429."""
        if conn.waiting != self.waits.key(p):
            self.unhold(conn)
            conn.waiting = self.waits.take(p)

    def unhold(self, conn: Connection) -> None:
        tid, conn.waiting = conn.waiting, 0
        if tid:
            self.waits.give(tid)

    # -- Handler ----------------------------------------------------------------------------
    def request(self, conn: Connection, method: bytes, path: bytes) -> None:
        if path == b"/healthz" and method == b"GET":
            conn.respond(200, {"status": "ok", "roles": ["notify"]})
        elif path == b"/metrics" and method == b"GET" and self.metrics is not None:
            conn.respond(200, self.metrics(), content_type=b"text/plain; version=0.0.4; charset=utf-8")
        elif path == b"/api/v1/notify" and method == b"GET":
            if not conn.auth:
                conn.respond(200, protocol.info(None))
                return
            conn.busy = True
            auth, conn.auth = conn.auth, ""
            self.submit(lambda: self._info(conn, auth))
        elif path == b"/api/v1/notify/longpoll":
            if method != b"POST":
                conn.respond(405, {"code": "method_not_allowed", "message": "use POST"})
                return
            conn.busy = True
            auth, body = conn.auth, bytes(conn.body)
            conn.auth, conn.body, conn.url = "", bytearray(), b""
            self.submit(lambda: self._longpoll(conn, auth, body))
        elif path == b"/api/v1/notify/ws":
            conn.respond(426, {"code": "upgrade_required", "message": "open this route as a WebSocket"})
        else:
            self._elsewhere(conn, method, path)

    def _elsewhere(self, conn: Connection, method: bytes, path: bytes) -> None:
        """Discovery, a 421 for another role's route, or 404 (as `cubby.server.discovery`)."""
        text = path.decode("latin-1")
        host = (conn.headers or {}).get(b"host", b"").decode("latin-1")
        here = f"http://{host}" if host else None
        addresses = {r: self.advertised.get(r) or (here if r == "notify" else None) for r in ROLES}
        role = role_for_path(text)
        if role == "any" and method == b"GET":
            conn.respond(200, {**addresses, "serves": ["notify"]})
        elif role in ("meta", "blocks"):
            url = addresses[role]
            where = f" at {url}" if url else ""
            conn.send_error(WrongRole(
                f"{method.decode('latin-1')} {text} is served by the {role} role{where}; this process serves "
                "notify. Point the client at the deployment's address, or ask /api/v1/discovery where each role is.",
                role=role, url=url,
            ))
        else:
            conn.respond(404, {"code": "not_found", "message": f"no route {text!r} here"})

    def wake(self, conn: Connection, sub: Subscription, wake: Wake) -> None:
        if conn.upgraded:
            self._wake_ws(conn, sub, wake)
        else:
            self._wake_longpoll(conn, sub, wake)

    def dropped(self, conn: Connection) -> None:
        self._drop(conn)
        self.unhold(conn)

    def _drop(self, conn: Connection) -> None:
        if conn.sub is not None:
            self.service.hub.remove(conn.sub)
            conn.sub = None

    # -- info -------------------------------------------------------------------------------
    async def _info(self, conn: Connection, auth: str) -> None:
        try:
            await self.authenticate(protocol.bearer(auth))
        except CubbyError as exc:
            conn.busy = False
            conn.send_error(exc)
            return
        hub = self.service.hub
        conn.busy = False
        conn.respond(200, protocol.info((hub.count, len(hub.namespaces()), self.service.resyncs)))

    # -- long-poll --------------------------------------------------------------------------
    async def _longpoll(self, conn: Connection, auth: str, raw: bytes) -> None:
        try:
            token = protocol.bearer(auth)
            p = await self.authenticate(token)
            body = protocol.json_object(raw)
            cursor = protocol.parse_cursor(body.get("cursor"), p)
            timeout = protocol.parse_timeout(body.get("timeout"))
            service = self.service
            await service.ensure_started()
            if conn.closed:
                return
            self.hold(conn, p)
            conn.principal, conn.token = p, token
            sub = Subscription(p.user_id, dict(cursor), conn.wake, oneshot=True)
            # Registered before the heads are read: a commit shows in the heads or wakes `sub`.
            service.hub.add(sub, timeout=protocol.jittered(timeout))
            conn.sub = sub
            try:
                heads = await service.check(cursor)
            except CubbyError:
                self._end_longpoll(conn)
                raise
            if conn.sub is not sub:
                return  # woken (and answered) while the heads were read
            moved = {ns: h for ns, h in heads.items() if h > cursor[ns]}
            if moved:
                service.hub.remove(sub)
                self._answer_longpoll(conn, sub, Wake(heads=moved))
        except CubbyError as exc:
            conn.busy = False
            conn.send_error(exc)
        except Exception:
            log.exception("long-poll failed")
            conn.busy = False
            conn.respond(500, {"code": "internal", "message": "the server failed to handle this request; it was logged"})

    def _wake_longpoll(self, conn: Connection, sub: Subscription, wake: Wake) -> None:
        if conn.sub is not sub:
            return
        if wake.account_changed:
            self.submit(lambda: self._recheck_longpoll(conn, sub, wake))
        else:
            self._answer_longpoll(conn, sub, wake)

    async def _recheck_longpoll(self, conn: Connection, sub: Subscription, wake: Wake) -> None:
        """The account changed (a share, a removal, a revoked token): a dead token gets 401."""
        try:
            conn.principal = await self.authenticate(conn.token)
        except CubbyError as exc:
            if conn.sub is sub:
                self._end_longpoll(conn)
                conn.busy = False
                conn.send_error(exc if isinstance(exc, Unauthorized) else Unauthorized(exc.message), close=True)
            return
        if conn.sub is sub:
            self._answer_longpoll(conn, sub, wake)

    def _end_longpoll(self, conn: Connection) -> None:
        self._drop(conn)
        self.unhold(conn)
        conn.principal, conn.token = None, ""

    def _answer_longpoll(self, conn: Connection, sub: Subscription, wake: Wake) -> None:
        heads = dict(sub.cursor)
        for ns, h in wake.heads.items():
            heads[ns] = max(heads.get(ns, 0), h)
        p = conn.principal
        self._end_longpoll(conn)
        conn.busy = False
        conn.respond(200, protocol.longpoll_answer(heads, wake, sorted(p.namespaces) if p else []))

    # -- WebSocket --------------------------------------------------------------------------
    def ws_opened(self, conn: Connection) -> None:
        auth, conn.auth = conn.auth, ""
        self.submit(lambda: self._ws_open(conn, auth))

    async def _ws_open(self, conn: Connection, auth: str) -> None:
        try:
            conn.token = protocol.bearer(auth)
            p = await self.authenticate(conn.token)
            await self.service.ensure_started()
            if conn.closed:
                return
            self.hold(conn, p)
            conn.principal = p
        except CubbyError as exc:
            conn.ws_send({"type": "error", **exc.to_dict()})
            conn.ws_close(4401 if isinstance(exc, Unauthorized) else 4429 if isinstance(exc, TooManyRequests) else 4503)
            return
        conn.done()

    def ws_message(self, conn: Connection, data: bytes) -> None:
        self.submit(lambda: self._ws_message(conn, data))

    async def _ws_message(self, conn: Connection, raw: bytes) -> None:
        try:
            await self._ws_subscribe(conn, raw)
        except Unauthorized as exc:
            self._ws_revoked(conn, exc)
            return
        except CubbyError as exc:
            conn.ws_send({"type": "error", **exc.to_dict()})
        except Exception:
            log.exception("WebSocket message failed")
            conn.ws_close(1011)
            return
        conn.done()

    async def _ws_subscribe(self, conn: Connection, raw: bytes) -> None:
        body = protocol.json_object(raw, "a message")
        # Read afresh: a token revoked, or a member removed, while no broker message could
        # reach this process must not subscribe again.
        conn.principal = p = await self.authenticate(conn.token)
        cursor = protocol.parse_cursor(body.get("cursor"), p)
        hub = self.service.hub
        self._drop(conn)
        sub = Subscription(p.user_id, dict(cursor), conn.wake, oneshot=False)
        hub.add(sub)
        try:
            heads = await self.service.check(cursor)
        except CubbyError:
            hub.remove(sub)
            raise
        if conn.closed:
            hub.remove(sub)
            return
        conn.sub = sub
        moved = {ns: h for ns, h in heads.items() if h > cursor[ns]}
        for ns, h in moved.items():
            sub.cursor[ns] = max(sub.cursor[ns], h)
        conn.ws_send({"type": "subscribed", "heads": protocol.heads_json(heads), "changed": bool(moved)})

    def _wake_ws(self, conn: Connection, sub: Subscription, wake: Wake) -> None:
        if wake.account_changed:
            self.submit(lambda: self._ws_reauthenticate(conn))
        elif wake.heads:
            conn.ws_send_frame(self.changed_frame(wake))

    def _ws_revoked(self, conn: Connection, exc: Unauthorized) -> None:
        self._drop(conn)
        self.unhold(conn)
        conn.ws_send({"type": "error", **exc.to_dict()})
        conn.ws_close(4401)

    async def _ws_reauthenticate(self, conn: Connection) -> None:
        """The account's namespaces changed: drop those it may no longer read and tell the
        client, or close with 4401 if the token no longer works."""
        try:
            p = await self.authenticate(conn.token)
        except Unauthorized as exc:
            self._ws_revoked(conn, exc)
            return
        except CubbyError:
            return
        conn.principal = p
        sub = conn.sub
        revoked = self.service.hub.narrow(sub, p.can_read) if sub is not None else []
        if sub is not None and not sub.active:
            conn.sub = None
        conn.ws_send({"type": "account_changed", "revoked": revoked})
