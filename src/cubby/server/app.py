"""Build the Starlette application from the roles asked for.

A role that is not running is not imported: `cubby serve --role meta` never loads the block
store or the notification broker code.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import AsyncIterator, Sequence

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cubby.server import discovery, metrics
from cubby.server.budget import BodyBudget
from cubby.server.context import ServerContext
from cubby.server.errors import HANDLERS
from cubby.server.front import Front

ROLES = ("meta", "blocks", "notify")
_ROLE_MODULES = {"meta": "cubby.server.meta", "blocks": "cubby.server.blocks", "notify": "cubby.server.notify"}


def role_routes(ctx: ServerContext, role: str) -> list[BaseRoute]:
    try:
        module = importlib.import_module(_ROLE_MODULES[role])
    except ModuleNotFoundError as exc:
        if exc.name == _ROLE_MODULES[role]:
            return []  # the role's seat is empty in this build
        raise
    return list(module.routes(ctx))


def build_app(ctx: ServerContext, roles: Sequence[str] = ROLES) -> Starlette:
    from cubby.server.openapi import document

    spec = document()

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "roles": list(roles), "pid": os.getpid()})

    routes: list[BaseRoute] = [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
    ]
    for role in roles:
        routes.extend(role_routes(ctx, role))
    if "meta" in roles or "blocks" in roles:
        from cubby.server import links  # management routes go with meta, public /l/ routes with blocks

        routes.extend(links.routes(ctx, roles, creator_access=ctx.store.user_can_read))
    if "meta" in roles:
        from cubby.server import sessions, web  # people: password login and the web app at /

        routes.extend(sessions.routes(ctx))
        routes.extend(web.routes(ctx))
    routes.extend(metrics.routes(ctx.metrics))
    # Last: discovery, and a 421 naming the right role for API routes this process lacks.
    routes.extend(discovery.routes(ctx.config, roles))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Before the first request, not during it: the first hand-off to a worker thread
        # imports anyio's backend and starts the thread, 25-35 ms that the first request of
        # every new process waited (a fresh server's first account answer took 30-43 ms,
        # the next ones 2 ms).
        await run_in_threadpool(lambda: None)
        try:
            yield
        finally:
            ctx.close()

    bodies = BodyBudget(ctx.config.max_buffered_bodies, grace=ctx.config.header_timeout)
    ctx.metrics.watch_budget("json", lambda: bodies.held)
    return Starlette(
        routes=routes,
        middleware=[  # logs, metrics, unread bodies, the budget of bodies held whole
            Middleware(Front, metrics=ctx.metrics, routes=routes, budget=bodies)
        ],
        exception_handlers=HANDLERS,  # type: ignore[arg-type]
        lifespan=lifespan,
    )
