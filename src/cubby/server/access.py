"""Who is asking, and what they may reach: the one place every request's access is checked.

A user's tree is their root namespace, with other namespaces mounted in it (shared folders:
`mounts` maps a mount path to a namespace). A user path resolves to the namespace of its
longest mount prefix and the path inside it. A namespace the principal cannot
read answers `NotFound`, exactly like one that does not exist, so nothing leaks that it does.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from cubby.core import paths
from cubby.errors import Forbidden, NotFound, Unauthorized
from cubby.model import Entry, Principal
from cubby.server.bodies import allow_body
from cubby.server.context import ServerContext


@dataclass(frozen=True)
class Target:
    ns_id: int
    path: str
    """Path inside the namespace."""
    mount: str
    """Where the namespace is mounted in the user's tree (``/`` for the root namespace)."""

    def user_path(self, ns_path: str) -> str:
        return ns_path if self.mount == paths.ROOT else paths.join(self.mount, ns_path.lstrip("/")).rstrip("/")


async def principal(request: Request, ctx: ServerContext, *, fresh: bool = False) -> Principal:
    """The caller, from their bearer token (or session cookie); only then may the request's
    body be read (`bodies.allow_body`), so a stranger's request costs a header and one token
    lookup. ``fresh``: read the memberships from the database, past the metadata cache, as a
    request does after it raced a share (the share's invalidation may not have reached the
    cache yet)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header and request.cookies:
        from cubby.server import sessions  # a browser: the session cookie, with its CSRF checks

        p = await sessions.principal(request, ctx)
    elif scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer TOKEN' (see 'cubby user add')")
    else:
        p = await run_in_threadpool(ctx.store.authenticate, token.strip(), fresh=fresh)
    request.state.user_id = p.user_id
    request.scope.setdefault("state", {})["user_id"] = p.user_id
    allow_body(request)
    return p


def mounts(p: Principal) -> dict[str, int]:
    """Mount path -> namespace id of everything in the principal's tree: the root namespace at
    ``/`` and every shared folder where it is mounted (`Principal.mounts`, read afresh from
    the database with every request)."""
    return {paths.ROOT: p.root_ns, **p.mounts}


def resolve(p: Principal, user_path: str, *, write: bool = False) -> Target:
    """Map a path in the user's tree to (namespace, path inside it), checking access."""
    norm = paths.normalize(user_path)
    best = paths.ROOT
    table = mounts(p)
    for mount in table:
        if paths.is_within(norm, mount) and len(mount) > len(best):
            best = mount
    ns_id = table[best]
    if not p.can_read(ns_id):
        raise NotFound(f"{norm} does not exist")
    if write and not p.can_write(ns_id):
        raise Forbidden(f"you can only view {best}: its owner gave you read-only access", code="read_only")
    inner = paths.ROOT if best == paths.ROOT and norm == paths.ROOT else (
        norm if best == paths.ROOT else paths.rebase(norm, best, paths.ROOT)
    )
    return Target(ns_id=ns_id, path=inner, mount=best)


def check_namespace(p: Principal, ns_id: int, *, write: bool = False) -> None:
    if not p.can_read(ns_id):
        raise NotFound(f"namespace {ns_id} does not exist")
    if write and not p.can_write(ns_id):
        raise Forbidden(f"namespace {ns_id} is read-only for you", code="read_only")


def user_entry(target: Target, entry: Entry) -> dict[str, object]:
    """An entry as the user sees it: its path in their tree."""
    d = entry.to_dict()
    d["path"] = target.user_path(entry.path)
    if entry.kind == "mount":
        # In a listing a shared folder is a folder; ``target_ns`` says whose journal holds it.
        d["kind"] = "folder"
    else:
        d.pop("target_ns", None)
    return d
