"""Which role serves which route, and where each role can be reached.

A client is configured with one URL. Behind it may be one all-in-one process, a load balancer
that routes by path, or a single role's process. So that every arrangement works for a client
that knows one address (as Dropbox's clients learn separate api, content and notify hosts):

- ``GET /api/v1/discovery`` (every role, no authentication: it reveals only addresses the
  operator publishes) answers ``{"meta": URL, "blocks": URL, "notify": URL}``: the configured
  address of each role (``--advertise-meta`` and friends), else this request's own base URL for a
  role this process serves, else null (unknown here: keep using the URL you have);
- a request for a route that this process does not serve answers 421 ``wrong_role``, naming the
  role that does and, when known, its address: the client then asks for discovery and sends
  the request there. A plain 404 would look like a missing file.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cubby.config import Config
from cubby.errors import WrongRole
from cubby.roles import ROLES, role_for_path
from cubby.server.errors import allowed_methods


def advertised(config: Config) -> dict[str, str | None]:
    """The addresses the operator configured for each role (None where not configured)."""
    return {"meta": config.advertise_meta, "blocks": config.advertise_blocks, "notify": config.advertise_notify}


def routes(config: Config, roles: Sequence[str]) -> list[BaseRoute]:
    """The discovery route, and a catch-all for API routes of roles this process lacks."""
    configured = advertised(config)
    served = set(roles)

    def addresses(request: Request) -> dict[str, str | None]:
        here = str(request.base_url).rstrip("/")
        return {r: (configured[r] or (here if r in served else None)) for r in ROLES}

    async def discovery(request: Request) -> Response:
        return JSONResponse({**addresses(request), "serves": sorted(served)}, headers={"Cache-Control": "no-store"})

    async def misdirected(request: Request) -> Response:
        allow = allowed_methods(request, ignore=misdirected)
        if allow:  # a route here serves this path, with other methods
            raise HTTPException(405, headers={"Allow": allow})
        role = role_for_path(request.url.path)
        if role is None or role == "any" or role in served:
            return JSONResponse({"code": "not_found", "message": f"no such route: {request.url.path}"}, status_code=404)
        url = addresses(request)[role]
        where = f" at {url}" if url else ""
        err = WrongRole(
            f"{request.method} {request.url.path} is served by the {role} role{where}; this process serves "
            f"{', '.join(sorted(served))}. Point the client at the deployment's address, or ask "
            "/api/v1/discovery where each role is.",
            role=role, url=url,
        )
        return JSONResponse(err.to_dict(), status_code=err.status)

    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]
    return [
        Route("/api/v1/discovery", discovery, methods=["GET"]),
        Route("/api/v1/{rest:path}", misdirected, methods=methods),
        Route("/l/{rest:path}", misdirected, methods=methods),
    ]
