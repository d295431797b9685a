"""The front of every HTTP request: its log line, its metrics, and what becomes of a body the
route did not read, in one ASGI wrapper.

These were three middlewares, each wrapping ``send`` (and two ``receive``) in closures of its
own and each timing the request: for a single-file commit, three layers of coroutine calls
on the way in and on every message out. Here one object per request holds the counts, one
``receive`` and one ``send`` do all three jobs, and one clock reading times it. The rules
themselves stay where they were: what a log line holds in `cubby.server.logs.log_request`,
the metric names and labels in `cubby.server.metrics` (`route_template`,
`Metrics.observe_request`), the unread-body rule in `cubby.server.unread`.

It sits where the middlewares sat, inside Starlette's ``ServerErrorMiddleware``: a request
whose route raised is logged and counted with status 500 and no bytes out, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cubby.server import unread
from cubby.server.bodies import SUNK
from cubby.server.budget import BodyBudget
from cubby.server.logs import ACCESS_LOGGER, log_request
from cubby.server.metrics import Metrics, route_template


class Exchange:
    """One request's traffic as the front sees it: status, bytes each way, and whether the
    body has been read to its end (`cubby.server.unread.BodyReader`)."""

    __slots__ = ("finished", "inner_receive", "inner_send", "received", "scope", "sent", "status")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.inner_receive = receive
        self.inner_send = send
        self.status = 0
        self.received = 0
        self.sent = 0
        self.finished = not unread.declares_body(scope)
        """True once no more body is owed: at once for a request that declares none."""

    async def receive(self) -> Message:
        msg = await self.inner_receive()
        body = msg.get("body")
        if body:
            self.received += len(body)
        if not self.finished and unread.ends_body(msg):
            self.finished = True
        return msg

    async def send(self, msg: Message) -> None:
        kind = msg["type"]
        if kind == "http.response.body":
            body = msg.get("body")
            if body:
                self.sent += len(body)
        elif kind == "http.response.start":
            if not self.finished:
                await unread.drain(self)
                if not self.finished:
                    msg = unread.closing(self.scope, msg)
            self.status = int(msg["status"])  # after the drain, which might fail
        await self.inner_send(msg)


class Front:
    """ASGI middleware: logs, counts and times every HTTP request, and deals with the body a
    route left unread (`cubby.server.unread`), and lends every request the process's budget of
    bodies held whole (`cubby.server.budget.BodyBudget`). Anything else (WebSocket, lifespan)
    passes through untouched."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute], budget: BodyBudget | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.budget = budget
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        if self.budget is not None:
            self.budget.lend(scope)
        ex = Exchange(scope, receive, send)
        try:
            await self.app(scope, ex.receive, ex.send)
        finally:
            seconds = time.perf_counter() - start
            status = ex.status or 500
            self.metrics.observe_request(route_template(scope, self.routes), scope["method"], status, seconds)
            log_request(self.log, scope, status, seconds, ex.received + scope.get(SUNK, 0), ex.sent)
