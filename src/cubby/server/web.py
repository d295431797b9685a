"""The web app at ``/`` of every process that serves the meta role.

The pages are a server-rendered shell (Jinja2, autoescaped) and one vanilla JavaScript module
(`cubby/web/static/app.js`) that talks to the same JSON API as the CLI, authenticated by the
session cookie plus the CSRF header (`cubby.server.sessions`). Nothing is built with Node.js:
the assets are plain files inside the Python package.

Every page carries a strict Content-Security-Policy (scripts and styles only from this origin,
no inline script, ``frame-ancestors 'none'``), ``X-Frame-Options: DENY``, ``nosniff`` and
``Referrer-Policy: no-referrer``. Data (file and user names) reaches the page only through
JSON and ``textContent``, never through HTML built from strings.

Routes here: ``/`` (the app, or the login page), ``/static/{file}``, ``/web/zip?path=`` (a
folder as a zip; where the blocks role runs too) and ``GET /api/v1/web/deleted?path=`` (the
deleted files of a folder, for undelete).
"""

from __future__ import annotations

import functools
import hashlib
import mimetypes
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cubby.core import paths
from cubby.errors import CubbyError, NotFound
from cubby.metadata.accounts import csrf_token
from cubby.server import access, sessions
from cubby.server.context import ServerContext

if TYPE_CHECKING:
    from jinja2 import Environment

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-src blob:; object-src blob:; media-src 'self' blob:; font-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}


def _static_files() -> dict[str, tuple[bytes, str, str]]:
    """Every static asset, read once: name -> (bytes, content type, ETag)."""
    out: dict[str, tuple[bytes, str, str]] = {}
    for item in resources.files("cubby.web").joinpath("static").iterdir():
        if item.is_file():
            data = item.read_bytes()
            ext = "." + item.name.rsplit(".", 1)[-1]
            ctype = STATIC_TYPES.get(ext) or mimetypes.guess_type(item.name)[0] or "application/octet-stream"
            out[item.name] = (data, ctype, '"' + hashlib.sha256(data).hexdigest()[:32] + '"')
    return out


def _templates() -> Environment:
    """The pages' Jinja2 environment. Made at the first page, not at the start: Jinja2 is a
    tenth of a server's imports, which every start pays (a blocks or notify process, each worker,
    each process a test suite starts) and most never render a page."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("cubby.web", "templates"), autoescape=select_autoescape(default=True))


def routes(ctx: ServerContext) -> list[BaseRoute]:
    templates = functools.cache(_templates)  # this app's own, made at its first page
    static = _static_files()
    version = hashlib.sha256(b"".join(v[2].encode() for v in static.values())).hexdigest()[:12]

    def page(name: str, **values: Any) -> HTMLResponse:
        html = templates().get_template(name).render(version=version, **values)
        return HTMLResponse(html, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})

    async def home(request: Request) -> Response:
        try:
            found = await run_in_threadpool(sessions.cookie_principal, request, ctx)
        except CubbyError:
            found = None  # an ended session: show the login page
        if found is None:
            return page("login.html")
        p, secret = found
        return page("app.html", user=p.name, csrf=csrf_token(secret))

    async def asset(request: Request) -> Response:
        item = static.get(request.path_params["name"])
        if item is None:
            raise NotFound("no such file")
        data, ctype, etag = item
        headers = {**SECURITY_HEADERS, "ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=ctype, headers=headers)

    async def deleted(request: Request) -> Response:
        p = await access.principal(request, ctx)
        t = access.resolve(p, request.query_params.get("path", "/"))
        rows = await run_in_threadpool(ctx.store.deleted, t.ns_id, t.path)
        for r in rows:
            r["path"] = t.user_path(r["path"])
        return JSONResponse({"deleted": rows})

    out: list[BaseRoute] = [
        Route("/", home, methods=["GET"]),
        Route("/static/{name}", asset, methods=["GET"]),
        Route("/api/v1/web/deleted", deleted, methods=["GET"]),
    ]
    if ctx.blocks is not None:
        from cubby.server.links import zip_response

        links = ctx.store.links
        blocks = ctx.blocks

        async def folder_zip(request: Request) -> Response:
            p = await access.principal(request, ctx)
            t = access.resolve(p, request.query_params.get("path", "/"))
            entry = await run_in_threadpool(ctx.store.stat, t.ns_id, t.path)
            if entry.kind == "file":
                raise NotFound(f"{t.user_path(t.path)} is a file: download it directly")
            user_path = t.user_path(t.path)
            name = p.name if user_path == paths.ROOT else paths.split(user_path)[1]
            return zip_response(links, blocks, t.ns_id, t.path, name, head=False, headers={"Cache-Control": "private"})

        out.append(Route("/web/zip", folder_zip, methods=["GET"]))
    return out
