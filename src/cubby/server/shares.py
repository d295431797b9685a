"""Share routes (part of the meta role): share a folder, accept, list, remove, leave, unshare.

Paths are paths in the caller's tree. A shared folder is named by where it is mounted there;
the store works on namespace ids. After every change the server announces the new journal
heads (`ServerContext.committed`) and tells every user whose namespaces changed
(`ServerContext.account_changed`), so their notification connections re-read what they may see.

| route | body | answer |
|---|---|---|
| `POST /api/v1/shares` | `{path, user, role: editor\\|viewer}` | `{share}` (201) |
| `GET /api/v1/shares` | | `{shares: [{ns_id, name, role, state, path, members}]}` |
| `POST /api/v1/shares/{ns_id}/accept` | | `{share: {ns_id, path, role}}` |
| `POST /api/v1/shares/remove` | `{path \\| ns_id, user}` | `{share}` |
| `POST /api/v1/shares/leave` | `{path \\| ns_id}` | `{share}` |
| `POST /api/v1/shares/unshare` | `{path \\| ns_id}` | `{share}` |
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cubby.core import paths
from cubby.errors import BadRequest, NamespaceMoved, NotFound
from cubby.metadata.shares import SharingChange
from cubby.model import Principal
from cubby.server import access
from cubby.server.bodies import SMALL_JSON, field_int, field_str, json_body, path_int
from cubby.server.context import ServerContext


def announce(ctx: ServerContext, change: SharingChange) -> None:
    """Tell notification processes: the members' accounts first, so that a waiting member is
    woken by the account change (and re-reads which folders it has), not by the journal entry
    of the same change, which would only say that some head moved."""
    for user_id in sorted(change.users):
        ctx.account_changed(user_id)
    for ns_id, head in change.heads.items():
        ctx.committed(ns_id, head)


def shared_folder(p: Principal, user_path: str) -> int:
    """The namespace of the shared folder mounted at ``user_path`` in the caller's tree."""
    t = access.resolve(p, user_path)
    if t.ns_id == p.root_ns or t.path != paths.ROOT:
        raise BadRequest(f"{paths.normalize(user_path)} is not a shared folder", code="not_a_shared_folder")
    return t.ns_id


def routes(ctx: ServerContext) -> list[BaseRoute]:
    sharing = ctx.store.sharing

    async def who(request: Request) -> Principal:
        return await access.principal(request, ctx)

    async def share(request: Request) -> Response:
        p = await who(request)
        body = await json_body(request, SMALL_JSON)
        path = field_str(body, "path") or ""
        user = field_str(body, "user") or ""
        role = field_str(body, "role", required=False) or "editor"

        def run(p: Principal) -> SharingChange:
            t = access.resolve(p, path)
            if t.ns_id != p.root_ns and t.path != paths.ROOT:
                raise BadRequest(
                    f"{paths.normalize(path)} is inside the shared folder {t.mount}: shared folders cannot nest",
                    code="nested_share",
                )
            folder = t.path if t.ns_id == p.root_ns else t.mount
            return sharing.share(p.user_id, p.root_ns, folder, user, role)

        try:
            change = await run_in_threadpool(run, p)
        except NamespaceMoved:
            change = await run_in_threadpool(run, await access.principal(request, ctx, fresh=True))
        announce(ctx, change)
        info = dict(change.info)
        if ctx.config.auto_accept_shares and info.get("state") == "invited":
            invitee = await run_in_threadpool(ctx.store.get_user, str(info["user"]))
            accepted = await run_in_threadpool(sharing.accept, invitee.id, invitee.root_ns, int(info["ns_id"]))
            announce(ctx, accepted)
            info["state"] = "active"
        return JSONResponse({"share": info}, status_code=201)

    async def listing(request: Request) -> Response:
        p = await who(request)
        return JSONResponse({"shares": await run_in_threadpool(sharing.list_shares, p.user_id)})

    async def accept(request: Request) -> Response:
        p = await who(request)
        ns_id = path_int(request, "ns_id")
        change = await run_in_threadpool(sharing.accept, p.user_id, p.root_ns, ns_id)
        announce(ctx, change)
        return JSONResponse({"share": change.info})

    def on_folder(act: Callable[[Principal, int, dict[str, Any]], SharingChange]) -> Callable[[Request], Awaitable[Response]]:
        """A route acting on the shared folder that the body's ``path`` names in the caller's
        tree, or that its ``ns_id`` names: the id still works when the mount's path does not
        (a name too long to type or to resolve), so such a folder can always be left."""

        async def handler(request: Request) -> Response:
            p = await who(request)
            body = await json_body(request, SMALL_JSON)
            ns_id = field_int(body, "ns_id", required=False, minimum=1)
            if ns_id is None:
                ns_id = shared_folder(p, field_str(body, "path") or "")
            elif ns_id > 2**62:
                raise NotFound(f"no shared folder {ns_id}", code="not_a_member")
            change = await run_in_threadpool(act, p, ns_id, body)
            announce(ctx, change)
            return JSONResponse({"share": change.info})

        return handler

    remove = on_folder(lambda p, ns_id, body: sharing.remove_member(p.user_id, ns_id, field_str(body, "user") or ""))
    leave = on_folder(lambda p, ns_id, body: sharing.leave(p.user_id, ns_id))
    unshare = on_folder(lambda p, ns_id, body: sharing.unshare(p.user_id, ns_id))

    return [
        Route("/api/v1/shares", share, methods=["POST"]),
        Route("/api/v1/shares", listing, methods=["GET"]),
        Route("/api/v1/shares/{ns_id}/accept", accept, methods=["POST"]),
        Route("/api/v1/shares/remove", remove, methods=["POST"]),
        Route("/api/v1/shares/leave", leave, methods=["POST"]),
        Route("/api/v1/shares/unshare", unshare, methods=["POST"]),
    ]


__all__ = ["announce", "routes", "shared_folder"]


def openapi_paths() -> dict[str, Any]:
    """The share routes in OpenAPI form, merged into ``/openapi.json`` (so schemathesis fuzzes them)."""
    from cubby.server.openapi import ID, PATH, WRITE_ERRORS

    err = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    errors = {str(c): err for c in (400, 401, 403, 404, 409)}
    with_body = {**errors, **{str(c): err for c in WRITE_ERRORS}}

    def ok(status: int = 200) -> dict[str, Any]:
        return {str(status): {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}

    def body(required: list[str], **props: dict[str, Any]) -> dict[str, Any]:
        schema = {"type": "object", "required": required, "properties": props}
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    text = {"type": "string"}
    path_only = {"requestBody": body([], path=PATH, ns_id=ID), "responses": {**ok(), **with_body}}
    return {
        "/api/v1/shares": {
            "post": {
                "summary": "Share a folder with a user (the first share turns it into a shared namespace)",
                "requestBody": body(["path", "user"], path=PATH, user=text, role={"type": "string", "enum": ["editor", "viewer"]}),
                "responses": {**ok(201), **with_body},
            },
            "get": {"summary": "The caller's shared folders and invitations", "responses": {**ok(), **errors}},
        },
        "/api/v1/shares/{ns_id}/accept": {
            "post": {
                "summary": "Accept an invitation: mount the folder in the caller's root",
                "parameters": [{"name": "ns_id", "in": "path", "required": True, "schema": ID}],
                "responses": {**ok(), **errors, "507": err},
            }
        },
        "/api/v1/shares/remove": {
            "post": {"summary": "Remove a member (owner only)", "requestBody": body(["user"], path=PATH, ns_id=ID, user=text),
                     "responses": {**ok(), **with_body}}
        },
        "/api/v1/shares/leave": {"post": {"summary": "Leave a shared folder", **path_only}},
        "/api/v1/shares/unshare": {"post": {"summary": "Unshare: members lose it, the owner keeps a folder", **path_only}},
    }
