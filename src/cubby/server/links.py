"""Links: unguessable public URLs to a file or a folder.

Management routes (meta role) need the creator's bearer token:

- ``POST /api/v1/links {path, expires?, password?}`` -> 201 ``{id, url, token, ...}``. The
  creator must be able to read ``path``; one who cannot gets 404, as for a missing path.
- ``GET /api/v1/links`` -> ``{links: [...]}``, the caller's links that are not revoked; with
  ``?all=true`` also links that members made into folders the caller owns (``created_by``
  names their creator; it is null for the caller's own).
- ``DELETE /api/v1/links/{id}`` -> 204, for the caller's link or any link into a folder the
  caller owns; 404 for any other.

Public routes (blocks role, no token): ``GET /l/{token}`` and ``GET /l/{token}/{subpath}``. A
file is streamed with Range and ETag exactly like ``/api/v1/content`` (same code,
`cubby.server.blocks.file_response`); a folder is streamed as a zip built on the fly
(`cubby.core.zipstream`). Every dead link (unknown, revoked, expired, target deleted) answers the
same 404 body. A password-protected link takes the password as HTTP Basic auth (any user name)
or in the ``X-Cubby-Link-Password`` header, and answers 401 with ``WWW-Authenticate: Basic``
without it or with a wrong one; guesses are throttled per link and per client address (429
with ``Retry-After``) and hashed on a pool of their own (`cubby.server.linkguard`). The token
never reaches the logs: every log line has ``/l/<token>`` redacted (`cubby.server.logs`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from cubby.blockstore.base import BlockStore
from cubby.core import paths
from cubby.core.zipstream import ZipMember, zip_stream
from cubby.errors import BadRequest, InvalidPath, NotFound
from cubby.metadata.links import GONE, Link, LinkInfo, LinkStore, check_password
from cubby.server import access
from cubby.server.blocks import file_response
from cubby.server.bodies import SMALL_JSON, json_body, query_bool
from cubby.server.context import ServerContext
from cubby.server.linkguard import ADDRESS_FREE, LINK_FREE, Outcome, PasswordGate
from cubby.server.peers import TrustedProxies
from cubby.server.throttle.base import Policy

PASSWORD_HEADER = "x-cubby-link-password"
MAX_PASSWORD = 1024
MAX_LIFETIME = 100 * 365 * 24 * 3600.0
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,128}$")
_LINK_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_PUBLIC_HEADERS = {"Cache-Control": "private", "X-Robots-Tag": "noindex, nofollow", "Referrer-Policy": "no-referrer"}


# ------------------------------------------------------------------------------------------
# input
# ------------------------------------------------------------------------------------------
def parse_expires(value: Any, now: float) -> float | None:
    """An expiry as seconds since the epoch, from a number of seconds or an ISO 8601 string
    (a time without a zone is UTC). `BadRequest` for anything else or a time not in the future."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            ts = float(value)
        except OverflowError:
            ts = math.inf
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip())
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            ts = when.timestamp()
        except (ValueError, OverflowError):
            raise BadRequest(
                f"'expires' must be an ISO 8601 date or time (e.g. 2030-01-31T12:00:00Z), not {value[:40]!r}",
                code="invalid_expires", field="expires",
            ) from None
    else:
        raise BadRequest("'expires' must be an ISO 8601 string or seconds since the epoch", code="invalid_expires", field="expires")
    if not math.isfinite(ts) or ts > now + MAX_LIFETIME:
        raise BadRequest("'expires' is too far in the future (at most 100 years)", code="invalid_expires", field="expires")
    if ts <= now:
        raise BadRequest("'expires' is in the past; give a future date", code="expires_in_past", field="expires")
    return ts


def parse_password(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_PASSWORD:
        raise BadRequest(f"'password' must be a string of 1 to {MAX_PASSWORD} characters", code="invalid_password", field="password")
    return value


def parse_subpath(raw: str | None) -> str | None:
    """The path below a folder link, by the rules of `cubby.core.paths`; an absolute or
    escaping path (``..``, NUL, ``//``) is `InvalidPath`, checked before the link is looked up
    so that the answer says nothing about the link."""
    if not raw:
        return None
    if raw.startswith("/"):
        raise InvalidPath("a path inside a link is relative to the linked folder; it cannot start with '/'")
    return paths.normalize(raw)


def presented_password(request: Request) -> str | None:
    """The password from ``Authorization: Basic`` (user name ignored) or the link password header."""
    header = request.headers.get(PASSWORD_HEADER)
    if header is not None:
        return header
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None


# ------------------------------------------------------------------------------------------
# answers
# ------------------------------------------------------------------------------------------
def link_dict(link: Link, path: str | None, kind: str | None, now: float) -> dict[str, Any]:
    state = "revoked" if link.revoked_at else "target_deleted" if path is None else "expired" if link.expired(now) else "active"
    return {
        "id": link.link_id,
        "path": path,
        "kind": kind,
        "created_at": link.created_at,
        "expires_at": link.expires_at,
        "has_password": link.has_password,
        "state": state,
    }


def _gone() -> Response:
    """The one answer for every dead link."""
    return JSONResponse({"code": "not_found", "message": GONE}, status_code=404, headers=_PUBLIC_HEADERS)


def _password_required() -> Response:
    return JSONResponse(
        {"code": "password_required", "message": "this link needs a password: send it as HTTP Basic auth (any user name)"},
        status_code=401,
        headers={"WWW-Authenticate": 'Basic realm="cubby link", charset="UTF-8"', **_PUBLIC_HEADERS},
    )


def _too_many(retry_after: int) -> Response:
    """Too many wrong passwords from this address or for this link (or the check is busy)."""
    return JSONResponse(
        {"code": "too_many_attempts", "message": f"too many password attempts: try again in {retry_after} s"},
        status_code=429, headers={"Retry-After": str(retry_after), **_PUBLIC_HEADERS},
    )


def _user_path(mounts: dict[str, int], ns_id: int, ns_path: str | None) -> str | None:
    """Where a namespace path is in the user's tree, or None when they no longer reach it."""
    if ns_path is None:
        return None
    for mount, ns in mounts.items():
        if ns == ns_id:
            return access.Target(ns_id=ns, path=ns_path, mount=mount).user_path(ns_path)
    return None


# ------------------------------------------------------------------------------------------
# routes
# ------------------------------------------------------------------------------------------
def management_routes(ctx: ServerContext, links: LinkStore) -> list[BaseRoute]:
    store = ctx.store

    async def create(request: Request) -> Response:
        p = await access.principal(request, ctx)
        body = await json_body(request, SMALL_JSON)
        raw_path = body.get("path")
        if not isinstance(raw_path, str):
            raise BadRequest("field 'path' must be a string", field="path")
        now = time.time()
        expires_at = parse_expires(body.get("expires"), now)
        password = parse_password(body.get("password"))
        target = access.resolve(p, raw_path)
        entry = await run_in_threadpool(store.stat, target.ns_id, target.path)
        link, token = await run_in_threadpool(
            links.create, p.user_id, target.ns_id, entry.node_id, expires_at=expires_at, password=password
        )
        base = str(ctx.config.public_url or request.base_url).rstrip("/")
        ctx.log.info(
            "link created",
            extra={"link_id": link.link_id, "ns_id": link.ns_id, "node_id": link.node_id, "user_id": p.user_id,
                   "expires_at": expires_at, "has_password": link.has_password},
        )
        out = link_dict(link, target.user_path(entry.path), entry.kind, now)
        out.update(url=f"{base}/l/{token}", token=token)
        return JSONResponse(out, status_code=201)

    async def listing(request: Request) -> Response:
        """The caller's links; with ``?all=true`` also those members made into the caller's
        folders (each with ``created_by``), which the caller may revoke as well."""
        p = await access.principal(request, ctx)
        infos: list[LinkInfo] = list(await run_in_threadpool(links.for_user, p.user_id))
        if query_bool(request, "all"):
            infos += await run_in_threadpool(links.for_owner, p.user_id)
        mounts = access.mounts(p)
        now = time.time()
        out = []
        for i in infos:
            d = link_dict(i.link, _user_path(mounts, i.link.ns_id, i.path), i.kind, now)
            d["created_by"] = i.creator if i.creator is not None and i.link.created_by != p.user_id else None
            out.append(d)
        return JSONResponse({"links": out})

    async def revoke(request: Request) -> Response:
        p = await access.principal(request, ctx)
        link_id = request.path_params["link_id"]
        if not _LINK_ID_RE.match(link_id):
            raise BadRequest("a link id is 16 lowercase hex digits (see 'cubby link ls')", code="invalid_link_id")
        link = await run_in_threadpool(links.revoke, p.user_id, link_id)
        ctx.log.info("link revoked", extra={"link_id": link.link_id, "user_id": p.user_id})
        return Response(status_code=204)

    return [
        Route("/api/v1/links", create, methods=["POST"]),
        Route("/api/v1/links", listing, methods=["GET"]),
        Route("/api/v1/links/{link_id}", revoke, methods=["DELETE"]),
    ]


class CreatorAccess(Protocol):
    """Whether a link's creator may still read the namespace the link points into.

    A link is worth no more than its creator's access: when they lose it (removed from a shared
    folder), their links into it answer 404 like any dead link. Called on every public request."""

    def __call__(self, user_id: int, ns_id: int) -> bool: ...


def owner_always_reads(user_id: int, ns_id: int) -> bool:
    """The check while every namespace is its owner's root, which the owner never loses; the
    shared-folder membership check replaces it where namespaces are shared."""
    return True


def public_routes(
    ctx: ServerContext, links: LinkStore, creator_access: CreatorAccess = owner_always_reads,
    gate: PasswordGate | None = None,
) -> list[BaseRoute]:
    """``gate`` checks passwords (throttled, on its own pool); by default one is made here
    and closed with the server."""
    blocks: BlockStore = ctx.blocks  # type: ignore[assignment]
    if gate is None:
        gate = PasswordGate(
            TrustedProxies.parse(ctx.config.trusted_proxies), check_password,
            per_address=ctx.throttles.make("link-address", Policy(free=ADDRESS_FREE)),
            per_link=ctx.throttles.make("link", Policy(free=LINK_FREE)),
            in_thread=ctx.in_thread,
        )
        ctx.closers.append(gate.close)

    async def serve(request: Request) -> Response:
        token = request.path_params["token"]
        raw_sub = request.path_params.get("subpath")
        request.scope.setdefault("state", {})["log_path"] = "/l/<token>" + (f"/{raw_sub}" if raw_sub else "")
        sub = parse_subpath(raw_sub)
        if not _TOKEN_RE.match(token):
            return _gone()
        try:
            found = await run_in_threadpool(links.resolve, token)
        except NotFound:
            return _gone()
        link = found.link
        request.scope["state"]["log_path"] = f"/l/<link {link.link_id}>" + (f"/{raw_sub}" if raw_sub else "")
        if not await run_in_threadpool(creator_access, link.created_by, link.ns_id):
            return _gone()
        if found.password_hash is not None:
            given = presented_password(request)
            if given is None:
                return _password_required()
            verdict = await gate.attempt(request.scope, link.link_id, given, found.password_hash)
            if verdict.outcome is not Outcome.RIGHT:
                ctx.log.info("link password refused", extra={"link_id": link.link_id, "outcome": verdict.outcome.value})
                return _too_many(verdict.retry_after) if verdict.retry_after else _password_required()
        target = found.target
        try:
            if sub is not None:
                if target.kind != "folder":
                    return _gone()
                target = await run_in_threadpool(links.lookup, link.ns_id, paths.join(target.path, sub.lstrip("/")))
            file = await run_in_threadpool(links.file, link.ns_id, target.node_id) if target.kind == "file" else None
        except NotFound:
            return _gone()
        if file is not None:  # (outside the try: a chunk the store lacks is not a gone link)
            entry, chunks = file
            ctx.log.info("link download", extra={"link_id": link.link_id, "kind": "file", "size": entry.size})
            return await file_response(request, entry, chunks, blocks, _PUBLIC_HEADERS)
        ctx.log.info("link download", extra={"link_id": link.link_id, "kind": "folder"})
        return zip_response(links, blocks, link.ns_id, target.path, target.name or "cubby", head=request.method == "HEAD")

    async def read_only(request: Request) -> Response:
        """Other methods on a link URL: refused here rather than by the router, so that the
        request log still shows no token."""
        request.scope.setdefault("state", {})["log_path"] = "/l/<token>"
        return JSONResponse(
            {"code": "method_not_allowed", "message": "a link can only be read (GET or HEAD)"},
            status_code=405, headers={"Allow": "GET, HEAD"},
        )

    others = ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return [
        Route("/l/{token}", serve, methods=["GET", "HEAD"]),
        Route("/l/{token}/{subpath:path}", serve, methods=["GET", "HEAD"]),
        Route("/l/{token}", read_only, methods=others),
        Route("/l/{token}/{subpath:path}", read_only, methods=others),
    ]


def zip_response(
    links: LinkStore, blocks: BlockStore, ns_id: int, folder: str, name: str, *, head: bool,
    headers: dict[str, str] | None = None,
) -> Response:
    """A folder as a zip streamed while it is made: Starlette runs the generator in a worker
    thread piece by piece, so the walk, the chunk reads and the sending are interleaved.
    (Also the web app's folder download, with its own ``headers``.)"""

    def members() -> Iterator[ZipMember]:
        yield ZipMember(name, "folder")
        for item in links.walk(ns_id, folder):
            yield ZipMember(f"{name}/{item.rel}", item.kind, item.size, item.mtime, item.chunks)

    filename = quote(name.replace('"', "") + ".zip", safe="")
    headers = {**(_PUBLIC_HEADERS if headers is None else headers),
               "Content-Disposition": f"attachment; filename*=UTF-8''{filename}"}
    if head:  # the headers a GET would send (no length: it is not known before the zip is made), building nothing
        return StreamingResponse(iter(()), media_type="application/zip", headers=headers)
    return StreamingResponse(zip_stream(members(), blocks.get), media_type="application/zip", headers=headers)


def routes(ctx: ServerContext, roles: Sequence[str], creator_access: CreatorAccess = owner_always_reads) -> list[BaseRoute]:
    """The link routes of the roles this server runs: management with meta, public with blocks."""
    links = ctx.store.links
    out: list[BaseRoute] = []
    if "meta" in roles:
        out += management_routes(ctx, links)
    if "blocks" in roles:
        out += public_routes(ctx, links, creator_access)
    return out


def openapi_paths() -> dict[str, Any]:
    """The link routes in OpenAPI form, merged into ``/openapi.json`` (so schemathesis fuzzes them)."""
    from cubby.server.openapi import PATH, WRITE_ERRORS

    err = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    errors = {str(c): err for c in (400, 401, 404)}
    link = {"type": "object", "properties": {"id": {"type": "string"}, "path": {"type": ["string", "null"]}, "state": {"type": "string"}}}
    binary = {"schema": {"type": "string", "format": "binary"}}
    public = {
        "summary": "Download a link's file (Range honoured) or folder (a zip, streamed); no token",
        "security": [],
        "parameters": [
            {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}},
            {"name": "X-Cubby-Link-Password", "in": "header", "required": False, "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {"description": "the file or zip", "content": {"application/octet-stream": binary, "application/zip": binary}},
            "206": {"description": "part of the file", "content": {"application/octet-stream": binary}},
            **{str(c): err for c in (400, 401, 404, 416, 429)},
        },
    }
    sub = {**public, "parameters": [*public["parameters"], {"name": "subpath", "in": "path", "required": True, "schema": PATH}]}
    return {
        "/api/v1/links": {
            "post": {
                "summary": "Create a public link to a file or folder the caller can read",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["path"],
                    "properties": {
                        "path": PATH,
                        "expires": {"type": ["string", "number", "null"]},
                        "password": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_PASSWORD},
                    },
                }}}},
                "responses": {
                    "201": {"description": "created", "content": {"application/json": {"schema": link}}},
                    **errors, **{str(c): err for c in WRITE_ERRORS},
                },
            },
            "get": {
                "summary": "The caller's links that are not revoked (all=true: and members' links into the caller's folders)",
                "parameters": [{"name": "all", "in": "query", "required": False, "schema": {"type": "boolean"}}],
                "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}, **errors},
            },
        },
        "/api/v1/links/{link_id}": {
            "delete": {
                "summary": "Revoke one of the caller's links, or any link into a folder the caller owns",
                "parameters": [{"name": "link_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}}],
                "responses": {"204": {"description": "revoked"}, **errors},
            }
        },
        "/l/{token}": {"get": public},
        "/l/{token}/{subpath}": {"get": sub},
    }


__all__ = [
    "CreatorAccess",
    "management_routes",
    "openapi_paths",
    "owner_always_reads",
    "parse_expires",
    "parse_subpath",
    "presented_password",
    "public_routes",
    "routes",
]
