"""The metadata role: files, folders, history, journal, account and tokens (and the share
routes of `cubby.server.shares`).

A write that resolved its path before the folder became a shared folder and reached the old
namespace after the share is refused by the store with `NamespaceMoved` (nothing changed); the
handlers here re-read the caller's mounts, resolve the path again and retry it once, so the
client sees it land in the shared folder, or a retryable error."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cubby.core import paths
from cubby.core.hashing import HASH_HEX_LEN
from cubby.errors import BadRequest, Conflict, CubbyError, NamespaceMoved
from cubby.metadata.base import MetadataStore
from cubby.model import ChunkRef, CommitRequest, CommitResult, Principal
from cubby.server import access
from cubby.server.bodies import (
    COMMIT_JSON,
    LIST_JSON,
    MAX_INT,
    SMALL_JSON,
    early_body,
    field_float,
    field_hash,
    field_int,
    field_str,
    json_body,
    json_of,
    path_int,
    query_bool,
    query_int,
)
from cubby.server.context import ServerContext
from cubby.server.responses import Json, RawJson, encode

MAX_BATCH = 1000
_chunk_name = re.compile(f"[0-9a-f]{{{HASH_HEX_LEN}}}").fullmatch
"""`is_chunk_name` for a value known to be a string (the quick path's test, bound once)."""
MAX_LABEL = 200
Handler = Callable[[Request], Awaitable[Response]]


def parse_commit(body: Any) -> CommitRequest:
    """One commit of a request, checked: `_plain_commit` when it is the usual shape, else
    every field through the `bodies` helpers (which say what is wrong)."""
    plain = _plain_commit(body)
    return plain if plain is not None else checked_commit(body)


def _plain_commit(body: Any) -> CommitRequest | None:
    """The commit when every field has exactly the type and range `checked_commit` accepts
    without conversion (what clients send), else None. A batch parses 1,000 of them on the
    event loop; this is a third of the work of the general path. (An integer is checked
    inline, ``type(v) is int`` and its range: a bool's type is bool; a call per field was a
    fifth of this function's time.)"""
    if type(body) is not dict:
        return None
    get = body.get  # each field by one lookup (a dict of them first cost a fifth of the parse)
    path: Any = get("path")
    size: Any = get("size")
    raw: Any = get("chunks")
    mtime: Any = get("mtime")
    expected: Any = get("expected_rev")
    mode: Any = get("mode")
    if not (
        type(path) is str and type(size) is int and 0 <= size <= MAX_INT and type(raw) is list
        and (expected is None or (type(expected) is int and 0 <= expected <= MAX_INT))
        and (mode is None or (type(mode) is int and 0 <= mode <= MAX_INT))
        and (mtime is None or (type(mtime) in (int, float) and abs(mtime) <= 1e13))
    ):
        return None
    chunks = []
    for c in raw:
        if type(c) is not dict:
            return None
        h: Any = c.get("hash")
        n: Any = c.get("size")
        if type(n) is not int or not 1 <= n <= MAX_INT or type(h) is not str or not _chunk_name(h):
            return None
        chunks.append(ChunkRef.of(h, n))
    return CommitRequest.of(path, size, tuple(chunks), expected, None if mtime is None else float(mtime), mode)


def checked_commit(body: Any) -> CommitRequest:
    """One commit checked field by field through the `bodies` helpers, which say what is
    wrong: the reference that `parse_commit`'s quick path must agree with."""
    if not isinstance(body, dict):
        raise BadRequest("each commit must be a JSON object")
    path = field_str(body, "path")
    size = field_int(body, "size")
    raw_chunks = body.get("chunks")
    if not isinstance(raw_chunks, list):
        raise BadRequest("field 'chunks' must be a list of {hash, size}", field="chunks")
    chunks = []
    for i, c in enumerate(raw_chunks):
        if not isinstance(c, dict):
            raise BadRequest(f"chunks[{i}] must be an object with 'hash' and 'size'", field="chunks")
        chunks.append(ChunkRef(field_hash(c.get("hash"), f"chunks[{i}].hash"), field_int(c, "size", minimum=1) or 0))
    expected = field_int(body, "expected_rev", required=False)
    assert path is not None and size is not None
    mode = field_int(body, "mode", required=False)
    return CommitRequest(
        path=path, size=size, chunks=tuple(chunks), expected_rev=expected, mtime=field_float(body, "mtime"), mode=mode
    )


def commit_answer(target: access.Target, res: CommitResult) -> dict[str, Any]:
    if res.entry is not None:
        return {"status": "committed", "entry": access.user_entry(target, res.entry)}
    return {
        "status": "need_chunks",
        "ns_id": target.ns_id,
        "needed": [
            {"hash": n.hash, "nonce": n.nonce, **({"base": list(n.base)} if n.base else {}),
             **({"window": n.window} if n.window is not None else {})}
            for n in res.needed
        ],
    }


def refused(exc: CubbyError) -> dict[str, Any]:
    """One refused commit of a batch: its error with the HTTP status it would have had alone,
    so that the client rebuilds the same error (a refusal whose code has no class of its own,
    ``not_a_folder`` say, is a `Conflict` by its 409, not a `BadRequest`)."""
    return {"status": "error", "error": {**exc.to_dict(), "status": exc.status}}


def failed(exc: CubbyError) -> dict[str, Any]:
    """One refused item of a batch: its error and the HTTP status it would have had alone."""
    return {"error": exc.to_dict(), "status": exc.status}


def routes(ctx: ServerContext) -> list[BaseRoute]:
    store = ctx.store

    async def who(request: Request) -> Principal:
        return await access.principal(request, ctx)

    async def once_more(request: Request, p: Principal, fn: Callable[[Principal, bool], Any]) -> tuple[Principal, Any]:
        """Run ``fn(p, False)`` in a thread; after `NamespaceMoved`, re-authenticate (fresh
        mounts) and run ``fn(p, True)`` once more: the second argument says the request raced
        a share. (An ``expected_rev`` read before the share still matches the unchanged copy:
        see `cubby.metadata.tree.same_as_before_share`.)"""
        try:
            return p, await run_in_threadpool(fn, p, False)
        except NamespaceMoved:
            ctx.log.info("request raced a share; resolving it again", extra={"path": request.url.path})
            p = await access.principal(request, ctx, fresh=True)
            return p, await run_in_threadpool(fn, p, True)

    async def account(request: Request) -> Response:
        p = await who(request)
        heads = {}
        for ns in access.mounts(p).values():
            heads[ns] = await run_in_threadpool(store.head, ns)
        # Each namespace the caller may write carries this hour's proof key, so that the
        # client proves new chunks before its first commit (`cubby.metadata.possession`).
        return Json(
            {
                "user_id": p.user_id,
                "name": p.name,
                "root_ns": p.root_ns,
                "namespaces": [
                    {
                        "ns_id": ns, "path": mount, "role": p.namespaces[ns], "head": heads[ns],
                        **({"proof_key": store.proof_key(p.user_id, ns)} if p.can_write(ns) else {}),
                    }
                    for mount, ns in access.mounts(p).items()
                ],
            }
        )

    def commit_as(p: Principal, req: CommitRequest) -> tuple[access.Target, CommitResult]:
        target = access.resolve_file(p, req.path)
        inner = CommitRequest(target.path, req.size, req.chunks, req.expected_rev, req.mtime, req.mode)
        return target, store.commit(p.user_id, target.ns_id, inner, access.mounts(p).values())

    async def commit(request: Request) -> Response:
        raw = await early_body(request)
        if raw is not None:  # a small body, all here: authenticate, parse and commit in one hop
            _, (target, res) = await access.as_writer(
                request, ctx, raw, lambda p, moved, raw: commit_as(p, parse_commit(json_of(request, raw)))
            )
        else:
            p = await who(request)
            req = parse_commit(await json_body(request, COMMIT_JSON))
            _, (target, res) = await once_more(request, p, lambda p, moved: commit_as(p, req))
        if res.entry is not None:
            ctx.committed(target.ns_id, res.entry.rev)
        return Json(commit_answer(target, res))

    async def commit_batch(request: Request) -> Response:
        p = await who(request)
        body = await json_body(request, COMMIT_JSON)
        items = body.get("commits")
        if not isinstance(items, list) or not items:
            raise BadRequest("field 'commits' must be a non-empty list of commits", field="commits")
        if len(items) > MAX_BATCH:
            raise BadRequest(f"at most {MAX_BATCH} commits per batch", field="commits")
        results: list[dict[str, Any] | None] = [None] * len(items)
        # A malformed commit refuses the whole batch (no client sends one); what the store
        # refuses (a conflict, a bad path) is answered per commit.
        parsed: dict[int, CommitRequest] = {}
        for i, raw in enumerate(items):
            try:
                parsed[i] = parse_commit(raw)
            except BadRequest as exc:
                raise BadRequest(f"commits[{i}]: {exc.message}", code=exc.code, **exc.details) from None
        todo = sorted(parsed)
        for attempt in range(2):
            if attempt:
                p = await access.principal(request, ctx, fresh=True)  # some paths became a shared folder
            groups: dict[int, list[tuple[int, access.Target, CommitRequest]]] = {}
            for i in todo:
                req = parsed[i]
                try:
                    target = access.resolve_file(p, req.path)
                except CubbyError as exc:
                    results[i] = refused(exc)
                    continue
                # Most paths come normalised and in the root namespace: the request as it is.
                inner = req if target.path == req.path else CommitRequest(
                    target.path, req.size, req.chunks, req.expected_rev, req.mtime, req.mode
                )
                groups.setdefault(target.ns_id, []).append((i, target, inner))
            moved: list[int] = []
            readable = list(access.mounts(p).values())
            for ns_id, group in groups.items():
                outcomes = await run_in_threadpool(store.commit_many, p.user_id, ns_id, [g[2] for g in group], readable)
                newest = 0
                for (i, target, _), out in zip(group, outcomes):
                    if isinstance(out, NamespaceMoved) and attempt == 0:
                        moved.append(i)
                    elif isinstance(out, CubbyError):
                        results[i] = refused(out)
                    else:
                        results[i] = commit_answer(target, out)
                        if out.entry is not None:
                            newest = max(newest, out.entry.rev)
                if newest:
                    ctx.committed(ns_id, newest)
            if not moved:
                break
            todo = moved
        return Json({"results": results})

    def mutation(fn: Callable[[Principal, dict[str, Any], bool], tuple[Any, ...]]) -> Handler:
        """A JSON mutation: ``fn`` answers (target, entry, *other namespaces it changed)."""

        async def handler(request: Request) -> Response:
            p = await who(request)
            body = await json_body(request, SMALL_JSON)
            _, (target, entry, *also) = await once_more(request, p, lambda q, moved: fn(q, body, moved))
            for ns_id in {target.ns_id, *also}:
                ctx.committed(ns_id, await run_in_threadpool(store.head, ns_id))
            return Json({"entry": access.user_entry(target, entry)})

        return handler

    def do_mkdir(p: Principal, body: dict[str, Any], moved: bool) -> tuple[access.Target, Any]:
        t = access.resolve(p, field_str(body, "path") or "", write=True)
        return t, store.mkdir(p.user_id, t.ns_id, t.path)

    def do_delete(p: Principal, body: dict[str, Any], moved: bool) -> tuple[access.Target, Any]:
        t = access.resolve(p, field_str(body, "path") or "", write=True)
        if t.path == paths.ROOT and t.ns_id != p.root_ns:
            raise Conflict(
                f"{t.mount} is a shared folder: leave it ('cubby share leave') or, as its owner, unshare it",
                code="is_shared_folder",
            )
        expected = field_int(body, "expected_rev", required=False)
        since = field_int(body, "unchanged_since", required=False)
        # A delete that raced the share was issued before the share was acknowledged: it
        # also forgets the history the share copied, so no member ever opens what it deleted.
        cut = store.sharing.cut(t.ns_id) if moved else None
        return t, store.delete(
            p.user_id, t.ns_id, t.path, expected, forget_through=cut, unchanged_since=since
        )

    def do_move(p: Principal, body: dict[str, Any], moved: bool) -> tuple[Any, ...]:
        expected = field_int(body, "expected_rev", required=False)
        src = access.resolve(p, field_str(body, "from_path") or "")
        dst = access.resolve(p, field_str(body, "to_path") or "", write=True)
        if src.path == paths.ROOT and src.ns_id != p.root_ns:
            # Renaming where a shared folder appears: its mount node lives in the root namespace.
            if dst.ns_id != p.root_ns:
                raise BadRequest("a shared folder cannot be put inside another shared folder", code="nested_share")
            root = access.Target(p.root_ns, src.mount, paths.ROOT)
            return root, store.move(p.user_id, p.root_ns, src.mount, dst.path, expected)
        src = access.resolve(p, field_str(body, "from_path") or "", write=True)
        if src.ns_id != dst.ns_id:
            # Out of a shared folder, into one, or between two: intents, no chunk moves.
            return dst, store.moves.move(p.user_id, src.ns_id, src.path, dst.ns_id, dst.path, expected), src.ns_id
        return src, store.move(p.user_id, src.ns_id, src.path, dst.path, expected)

    async def mkdir_group(
        request: Request, p: Principal, raws: list[Any], results: list[dict[str, Any] | None], start: int, touched: set[int]
    ) -> Principal:
        """Folder creations of a batch, one transaction per namespace (`mkdir_many`); those
        that raced a share are resolved again with fresh mounts and retried once."""
        todo = list(range(len(raws)))
        for attempt in range(2):
            if attempt:
                p = await who(request)
            groups: dict[int, list[tuple[int, access.Target]]] = {}
            for k in todo:
                try:
                    t = access.resolve(p, field_str(raws[k], "path") or "", write=True)
                except CubbyError as exc:
                    results[start + k] = failed(exc)
                    continue
                groups.setdefault(t.ns_id, []).append((k, t))
            moved: list[int] = []
            for ns_id, group in groups.items():
                outs = await run_in_threadpool(store.mkdir_many, p.user_id, ns_id, [t.path for _, t in group])
                for (k, t), out in zip(group, outs):
                    if isinstance(out, NamespaceMoved) and attempt == 0:
                        moved.append(k)
                    elif isinstance(out, CubbyError):
                        results[start + k] = failed(out)
                    else:
                        results[start + k] = {"entry": access.user_entry(t, out)}
                        touched.add(ns_id)
            if not moved:
                break
            todo = moved
        return p

    async def batch(request: Request) -> Response:
        """Folder creations, deletes and moves, up to `MAX_BATCH` per request, applied in the
        order given, each with its own outcome (a refused one does not stop the rest). A run of
        consecutive creations is one transaction per namespace: a first sync of a tree makes
        thousands of folders, and one request each was most of its requests."""
        p = await who(request)
        body = await json_body(request, LIST_JSON)
        items = body.get("ops")
        if not isinstance(items, list) or not items or len(items) > MAX_BATCH:
            raise BadRequest(f"field 'ops' must be a list of 1 to {MAX_BATCH} operations", field="ops")
        for raw in items:
            if not isinstance(raw, dict) or raw.get("op") not in ("mkdir", "delete", "move"):
                raise BadRequest("each operation must be an object whose 'op' is mkdir, delete or move", field="ops")
        results: list[dict[str, Any] | None] = [None] * len(items)
        touched: set[int] = set()
        i = 0
        while i < len(items):
            if items[i]["op"] == "mkdir":
                j = i
                while j < len(items) and items[j]["op"] == "mkdir":
                    j += 1
                p = await mkdir_group(request, p, items[i:j], results, i, touched)
                i = j
                continue
            def run(q: Principal, moved: bool, raw: dict[str, Any] = items[i]) -> tuple[Any, ...]:
                return (do_delete if raw["op"] == "delete" else do_move)(q, raw, moved)

            try:
                p, (target, entry, *also) = await once_more(request, p, run)
                touched.update({target.ns_id, *also})
                results[i] = {"entry": access.user_entry(target, entry)}
            except CubbyError as exc:
                results[i] = failed(exc)
            i += 1
        for ns_id in touched:
            ctx.committed(ns_id, await run_in_threadpool(store.head, ns_id))
        return Json({"results": results})

    def do_restore(p: Principal, body: dict[str, Any], moved: bool) -> tuple[access.Target, Any]:
        t = access.resolve(p, field_str(body, "path") or "", write=True)
        return t, store.restore(p.user_id, t.ns_id, t.path, field_int(body, "rev", minimum=1) or 0)

    # Warm reads are one cache lookup for the encoded answer (`ServerContext.answer`, keyed by
    # the namespace head), after the two for the caller and one for the head; with the
    # in-process cache the whole request runs on the event loop (`access.as_caller`).
    async def stat(request: Request) -> Response:
        where = request.query_params.get("path", "/")

        def run(p: Principal, moved: bool) -> bytes:
            t = access.resolve(p, where)
            return ctx.answer(
                t.ns_id, ("stat", t.path, t.mount),
                lambda s: encode({"entry": access.user_entry(t, s.stat(t.ns_id, t.path))}),
            )

        return RawJson((await access.as_caller(request, ctx, run))[1])

    async def listing(request: Request) -> Response:
        recursive = query_bool(request, "recursive")
        cursor = request.query_params.get("cursor") or None
        limit = query_int(request, "limit", 1000, minimum=1, maximum=10_000)
        where = request.query_params.get("path", "/")

        def build(t: access.Target, s: MetadataStore) -> bytes:
            page = s.list(t.ns_id, t.path, recursive, cursor, limit)
            entries = [access.user_entry(t, e) for e in page.entries]
            return encode({"entries": entries, "cursor": page.cursor, "has_more": page.has_more})

        def run(p: Principal, moved: bool) -> bytes:
            t = access.resolve(p, where)
            return ctx.answer(t.ns_id, ("list", t.path, t.mount, recursive, cursor, limit), lambda s: build(t, s))

        return RawJson((await access.as_caller(request, ctx, run))[1])

    async def history(request: Request) -> Response:
        p = await who(request)
        t = access.resolve(p, request.query_params.get("path", ""))
        revs = await run_in_threadpool(store.history, t.ns_id, t.path, query_int(request, "limit", 100, minimum=1, maximum=10_000))
        out = []
        for r in revs:
            d = r.to_dict()
            d["path"] = t.user_path(r.path)
            out.append(d)
        return Json({"revisions": out})

    async def blocklist(request: Request) -> Response:
        rev = query_int(request, "rev", 0) or None
        where = request.query_params.get("path", "")

        def build(t: access.Target, s: MetadataStore) -> bytes:
            entry, chunks = s.blocklist(t.ns_id, t.path, rev)
            return encode(
                {"entry": access.user_entry(t, entry), "chunks": [{"hash": c.hash, "size": c.size} for c in chunks]}
            )

        def run(p: Principal, moved: bool) -> bytes:
            t = access.resolve(p, where)
            return ctx.answer(t.ns_id, ("bl", t.path, t.mount, rev), lambda s: build(t, s))

        return RawJson((await access.as_caller(request, ctx, run))[1])

    async def blocklists(request: Request) -> Response:
        """Many files' chunk lists in one request: what a download of many small files needs."""
        p = await who(request)
        body = await json_body(request, LIST_JSON)
        items = body.get("paths")
        if not isinstance(items, list) or not items or len(items) > MAX_BATCH or not all(isinstance(i, str) for i in items):
            raise BadRequest(f"field 'paths' must be a list of 1 to {MAX_BATCH} path strings", field="paths")
        out: list[dict[str, Any] | None] = [None] * len(items)
        groups: dict[int, list[tuple[int, access.Target]]] = {}
        for i, raw in enumerate(items):
            try:
                t = access.resolve(p, raw)
                groups.setdefault(t.ns_id, []).append((i, t))
            except CubbyError as exc:
                out[i] = {"error": exc.to_dict()}
        for ns_id, group in groups.items():
            # one read per namespace, not one per file
            answers = await run_in_threadpool(store.blocklists, ns_id, [t.path for _, t in group])
            for (i, t), ans in zip(group, answers):
                if isinstance(ans, CubbyError):
                    out[i] = {"error": ans.to_dict()}
                else:
                    entry, chunks = ans
                    out[i] = {"entry": access.user_entry(t, entry), "chunks": [{"hash": c.hash, "size": c.size} for c in chunks]}
        return Json({"results": out})

    async def journal(request: Request) -> Response:
        p = await who(request)
        ns_id = query_int(request, "ns_id", p.root_ns, minimum=1)
        access.check_namespace(p, ns_id)
        after = query_int(request, "after", 0)
        limit = query_int(request, "limit", 1000, minimum=1, maximum=10_000)
        entries = await run_in_threadpool(store.journal, ns_id, after, limit)
        head = await run_in_threadpool(store.head, ns_id)
        return Json(
            {
                "ns_id": ns_id,
                "entries": [e.to_dict() for e in entries],
                "head": head,
                "has_more": bool(entries) and entries[-1].jid < head,
            }
        )

    async def tokens_create(request: Request) -> Response:
        p = await who(request)
        body = await json_body(request, SMALL_JSON)
        label = field_str(body, "label", required=False) or ""
        if len(label) > MAX_LABEL:
            raise BadRequest(f"a token's label is at most {MAX_LABEL} characters", field="label")
        tid, token = await run_in_threadpool(store.create_token, p.user_id, label)
        return Json({"id": tid, "token": token}, status_code=201)

    async def tokens_list(request: Request) -> Response:
        p = await who(request)
        return Json({"tokens": await run_in_threadpool(store.list_tokens, p.user_id)})

    async def tokens_revoke(request: Request) -> Response:
        p = await who(request)
        await run_in_threadpool(store.revoke_token, p.user_id, path_int(request, "token_id"))
        # Through the broker to every notification process: the user's waiting connections
        # re-authenticate, and the revoked token's end (`cubby.notify.wire.endpoints`).
        ctx.account_changed(p.user_id)
        return Response(status_code=204)

    from cubby.server import shares

    # Moves between namespaces and shares across shards that a crash interrupted are finished
    # or undone before serving.
    try:
        store.moves.recover()
    except CubbyError:
        ctx.log.exception("could not recover an interrupted move; it is retried before the next move")
    try:
        store.sharing.recover()
    except CubbyError:
        ctx.log.exception("could not recover an interrupted share; it is retried before the next share")
    # So are moves of whole namespaces between shards (`cubby admin move-namespace`).
    from cubby.metadata.rebalance import NamespaceMover

    try:
        router = getattr(store, "router", None)  # the plain store's, under the cache
        if router is not None:
            NamespaceMover(router).recover()
    except CubbyError:
        ctx.log.exception("could not recover an interrupted namespace move; it is retried when a writer waits for it")
    return [
        *shares.routes(ctx),
        Route("/api/v1/account", account, methods=["GET"]),
        Route("/api/v1/files/commit", commit, methods=["POST"]),
        Route("/api/v1/files/commit_batch", commit_batch, methods=["POST"]),
        Route("/api/v1/files/mkdir", mutation(do_mkdir), methods=["POST"]),
        Route("/api/v1/files/delete", mutation(do_delete), methods=["POST"]),
        Route("/api/v1/files/move", mutation(do_move), methods=["POST"]),
        Route("/api/v1/files/batch", batch, methods=["POST"]),
        Route("/api/v1/files/restore", mutation(do_restore), methods=["POST"]),
        Route("/api/v1/files/stat", stat, methods=["GET"]),
        Route("/api/v1/files/list", listing, methods=["GET"]),
        Route("/api/v1/files/history", history, methods=["GET"]),
        Route("/api/v1/files/blocklist", blocklist, methods=["GET"]),
        Route("/api/v1/files/blocklists", blocklists, methods=["POST"]),
        Route("/api/v1/journal", journal, methods=["GET"]),
        Route("/api/v1/tokens", tokens_create, methods=["POST"]),
        Route("/api/v1/tokens", tokens_list, methods=["GET"]),
        Route("/api/v1/tokens/{token_id}", tokens_revoke, methods=["DELETE"]),
    ]
