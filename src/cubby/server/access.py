"""Who is asking, and what they may reach: the one place every request's access is checked.

A user's tree is their root namespace, with other namespaces mounted in it (shared folders:
`mounts` maps a mount path to a namespace). A user path resolves to the namespace of its
longest mount prefix and the path inside it. A namespace the principal cannot
read answers `NotFound`, exactly like one that does not exist, so nothing leaks that it does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from cubby.cache.store import CacheMiss
from cubby.core import paths
from cubby.errors import Conflict, CubbyError, Forbidden, NamespaceMoved, NotFound, Unauthorized
from cubby.model import Entry, Principal
from cubby.server.bodies import allow_body
from cubby.server.context import ServerContext

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    ns_id: int
    path: str
    """Path inside the namespace."""
    mount: str
    """Where the namespace is mounted in the user's tree (``/`` for the root namespace)."""

    def user_path(self, ns_path: str) -> str:
        return ns_path if self.mount == paths.ROOT else paths.join(self.mount, ns_path.lstrip("/")).rstrip("/")


def _bearer(request: Request) -> str | None:
    """The bearer token of the request; None when it has no Authorization header but
    cookies (a browser's session); `Unauthorized` when it has neither."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header and request.cookies:
        return None
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer TOKEN' (see 'cubby user add')")
    return token.strip()


def _admit(request: Request, p: Principal) -> None:
    """The caller is known: name them for the request's log line and open the body's gate.
    Written to the scope's state dict itself (what ``request.state`` wraps), so that no
    ``State`` object is built per request for it."""
    request.scope.setdefault("state", {})["user_id"] = p.user_id
    allow_body(request)


def on_loop(ctx: ServerContext, fn: Callable[[], T]) -> tuple[T] | None:
    """``(fn(),)``, run right here on the event loop, when every cached read it makes is a hit
    of an in-process cache (`CachedStore.hits_only`); None when one is not, or when there is
    no such cache, and the caller runs ``fn`` in a thread instead. A hit is a dict lookup
    under a lock: cheaper than the hop to a thread and back, and it never waits on I/O."""
    cached = ctx.cached
    if cached is None or not cached.local:
        return None
    try:
        with cached.hits_only():
            return (fn(),)
    except CacheMiss:
        return None


async def principal(request: Request, ctx: ServerContext, *, fresh: bool = False) -> Principal:
    """The caller, from their bearer token (or session cookie); only then may the request's
    body be read (`bodies.allow_body`), so a stranger's request costs a header and one token
    lookup. ``fresh``: read the memberships from the database, past the metadata cache, as a
    request does after it raced a share (the share's invalidation may not have reached the
    cache yet)."""
    token = _bearer(request)
    if token is None:
        from cubby.server import sessions  # a browser: the session cookie, with its CSRF checks

        p = await sessions.principal(request, ctx)
    else:
        hit = None if fresh else on_loop(ctx, lambda: ctx.store.authenticate(token))
        p = hit[0] if hit is not None else await run_in_threadpool(ctx.store.authenticate, token, fresh=fresh)
    _admit(request, p)
    return p


async def as_caller(request: Request, ctx: ServerContext, fn: Callable[[Principal, bool], T]) -> tuple[Principal, T]:
    """Authenticate the caller and run ``fn(p, False)`` for them, both in one hop to a thread
    (or none: `on_loop`) and in one database read transaction (`Database.reading`), for a
    route that reads and writes nothing else; ``fn`` must not read the body, and a caller the
    token does not name never reaches it. After `NamespaceMoved` (the request
    raced a share) the principal is read afresh and ``fn(p, True)`` runs once more."""
    token = _bearer(request)
    if token is None:
        p = await principal(request, ctx)
        try:
            return p, await run_in_threadpool(fn, p, False)
        except NamespaceMoved:
            return await _again(request, ctx, fn)

    def both() -> tuple[Principal, tuple[T] | CubbyError]:
        p = ctx.store.authenticate(token)
        try:
            return p, (fn(p, False),)
        except CubbyError as exc:
            return p, exc  # the principal still goes on the request (its log line names the user)

    def both_reading() -> tuple[Principal, tuple[T] | CubbyError]:
        with ctx.store.reading():  # whatever they read from the database: one transaction
            return both()

    hit = on_loop(ctx, both)
    p, out = hit[0] if hit is not None else await ctx.in_thread(both_reading)
    _admit(request, p)
    if isinstance(out, NamespaceMoved):
        return await _again(request, ctx, fn)
    if isinstance(out, CubbyError):
        raise out
    return p, out[0]


async def as_writer(
    request: Request, ctx: ServerContext, raw: bytes, fn: Callable[[Principal, bool, bytes], T]
) -> tuple[Principal, T]:
    """Authenticate the caller and run ``fn(p, False, raw)`` for them, in one hop to a thread,
    for a write route whose whole body ``raw`` arrived before authentication
    (`bodies.early_body`; ``fn`` parses it with `bodies.json_of`, which the gate allows only
    once the token checked out here). Unlike `as_caller`, never on the event loop (a write
    waits on the database) and in no shared read transaction (the write opens its own). A
    caller the token does not name never reaches ``fn``; after `NamespaceMoved` the
    principal is read afresh and ``fn(p, True, raw)`` runs once more."""
    token = _bearer(request)
    if token is None:  # a browser session: its own checks, then the usual second hop
        p = await principal(request, ctx)
        try:
            return p, await run_in_threadpool(fn, p, False, raw)
        except NamespaceMoved:
            return await _again(request, ctx, lambda p, moved: fn(p, moved, raw))

    def both() -> tuple[Principal, tuple[T] | CubbyError]:
        p = ctx.store.authenticate(token)
        allow_body(request)  # the caller is known: ``fn`` may parse the body
        try:
            return p, (fn(p, False, raw),)
        except CubbyError as exc:
            return p, exc  # the principal still goes on the request (its log line names the user)

    p, out = await ctx.in_thread(both)
    _admit(request, p)
    if isinstance(out, NamespaceMoved):
        return await _again(request, ctx, lambda p, moved: fn(p, moved, raw))
    if isinstance(out, CubbyError):
        raise out
    return p, out[0]


async def _again(request: Request, ctx: ServerContext, fn: Callable[[Principal, bool], T]) -> tuple[Principal, T]:
    ctx.log.info("request raced a share; resolving it again", extra={"path": request.url.path})
    p = await principal(request, ctx, fresh=True)
    return p, await run_in_threadpool(fn, p, True)


def mounts(p: Principal) -> dict[str, int]:
    """Mount path -> namespace id of everything in the principal's tree: the root namespace at
    ``/`` and every shared folder where it is mounted (`Principal.mounts`, read afresh from
    the database with every request)."""
    return {paths.ROOT: p.root_ns, **p.mounts}


def resolve_file(p: Principal, user_path: str) -> Target:
    """`resolve` for writing a file at ``user_path``: a shared folder's mount point is a
    folder, and is refused as one (inside its namespace it is the root, which the store would
    refuse in words about a root the user never named)."""
    target = resolve(p, user_path, write=True)
    if target.path == paths.ROOT and target.mount != paths.ROOT:
        raise Conflict(f"{target.mount} is a shared folder; cannot write a file there", code="is_a_folder")
    return target


def resolve(p: Principal, user_path: str, *, write: bool = False) -> Target:
    """Map a path in the user's tree to (namespace, path inside it), checking access."""
    norm = paths.normalize(user_path)
    if not p.mounts:  # nothing mounted: the root namespace, the path as it is (a commit batch: per file)
        ns_id = p.root_ns
        if not p.can_read(ns_id):
            raise NotFound(f"{norm} does not exist")
        if write and not p.can_write(ns_id):
            raise Forbidden(f"you can only view {paths.ROOT}: its owner gave you read-only access", code="read_only")
        return Target(ns_id=ns_id, path=norm, mount=paths.ROOT)
    best = paths.ROOT
    table = mounts(p) if p.mounts else {paths.ROOT: p.root_ns}  # nothing mounted: no merge
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
