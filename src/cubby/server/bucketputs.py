"""The routes of uploads straight to the bucket (``uploads=direct``, `cubby.blockstore.directput`).

``POST /api/v1/blocks/put_plan`` ``{"ns_id", "chunks": [[name, size], ...]}``: a pack laid out
for those chunks and the signed PUT of it, for the client to send to the bucket, with a
ticket; or ``{"direct": false}`` where the block store hands out no PUTs (the default), and
the client uploads through ``/blocks/upload`` as always. ``POST /api/v1/blocks/put_done``
``{"ns_id", "pack", "chunks", "expires", "ticket"}``, once the bucket has answered the PUT:
the pack's chunks are indexed and made available to the namespace, as an upload's are, and
the answer is an upload's (``{"received", "stored"}``).

Who may do what is checked as for an upload: the caller must be able to write ``ns_id``. The
ticket (`cubby.metadata.chunks.ChunkAccess.direct_put_ticket`) binds a plan to its caller,
namespace, pack, chunks and expiry, so that ``put_done`` adopts only packs this server laid
out for that caller; the bucket's check of every chunk's signature makes sure the bytes are
the chunks named. A ``put_done`` for a pack the bucket does not hold (never sent, refused)
is 409 ``pack_not_stored`` and changes nothing.
"""

from __future__ import annotations

import hmac
import re
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cubby.blockstore.base import BlockStore
from cubby.blockstore.directput import HandsOutPuts
from cubby.core.chunking import MAX_SIZE, MIN_DIRECT
from cubby.core.hashing import is_chunk_name
from cubby.errors import BadRequest, Forbidden
from cubby.server import access
from cubby.server.bodies import LIST_JSON, field_int, field_str, json_body
from cubby.server.context import ServerContext

PUT_PACK_BYTES = 64 * 1024 * 1024
"""The most chunk bytes one pack put by a client may hold (a client asks for 16 MiB)."""
MAX_PUT_CHUNKS = PUT_PACK_BYTES // MIN_DIRECT
TICKET_SECONDS = 30 * 60
"""How long a plan may be adopted after it was handed out: the PUT's signature lasts 15
minutes (SigV4's limit on a request's date), the rest is for the client's answer."""
_PACK_ID = re.compile(r"[0-9a-f]{34}")


def parse_put_chunks(value: Any) -> list[tuple[str, int]]:
    """``[[name, size], ...]``: 1 to `MAX_PUT_CHUNKS` distinct chunks of `MIN_DIRECT` to
    `MAX_SIZE` bytes, `PUT_PACK_BYTES` in all, else `BadRequest`."""
    shape = f"field 'chunks' must be a list of 1 to {MAX_PUT_CHUNKS} [hash, size] pairs"
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PUT_CHUNKS:
        raise BadRequest(shape, field="chunks")
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    total = 0
    for item in value:
        if not isinstance(item, list) or len(item) != 2 or not is_chunk_name(item[0]) or type(item[1]) is not int:
            raise BadRequest(shape, field="chunks")
        name, size = item
        if not MIN_DIRECT <= size <= MAX_SIZE:
            raise BadRequest(
                f"each chunk put in a pack must be {MIN_DIRECT} to {MAX_SIZE} bytes (smaller ones go through /blocks/upload)",
                field="chunks",
            )
        if name in seen:
            raise BadRequest(f"chunk {name} is listed twice", field="chunks")
        seen.add(name)
        total += size
        out.append((name, size))
    if total > PUT_PACK_BYTES:
        raise BadRequest(f"one pack may hold at most {PUT_PACK_BYTES} bytes of chunks", field="chunks")
    return out


def routes(ctx: ServerContext) -> list[BaseRoute]:
    store = ctx.store
    blocks: BlockStore = ctx.blocks  # type: ignore[assignment]  # set wherever the blocks role is served

    async def asked(request: Request) -> tuple[access.Principal, dict[str, Any], int, list[tuple[str, int]]]:
        """Who asks, the request's body, its namespace (which the caller must be able to
        write, as for an upload) and its chunks, checked before anything else is done."""
        p = await access.principal(request, ctx)
        body = await json_body(request, LIST_JSON)
        ns_id = field_int(body, "ns_id", minimum=1) or 0
        access.check_namespace(p, ns_id, write=True)
        return p, body, ns_id, parse_put_chunks(body.get("chunks"))

    async def put_plan(request: Request) -> Response:
        p, _, ns_id, chunks = await asked(request)
        plan = await run_in_threadpool(blocks.direct_put, chunks) if isinstance(blocks, HandsOutPuts) else None
        if plan is None:
            return JSONResponse({"direct": False})
        expires = int(time.time()) + TICKET_SECONDS
        ticket = store.direct_put_ticket(p.user_id, ns_id, plan.layout.pack, chunks, expires)
        return JSONResponse(
            {"direct": True, **plan.to_wire(), "expires": expires, "ticket": ticket}, headers={"Cache-Control": "no-store"}
        )

    async def put_done(request: Request) -> Response:
        p, body, ns_id, chunks = await asked(request)
        pack = field_str(body, "pack") or ""
        if not _PACK_ID.fullmatch(pack):
            raise BadRequest("field 'pack' must be the pack id a put_plan answer named", field="pack")
        expires = field_int(body, "expires", minimum=0) or 0
        ticket = field_str(body, "ticket") or ""
        expected = store.direct_put_ticket(p.user_id, ns_id, pack, chunks, expires)
        if not hmac.compare_digest(expected.encode(), ticket.encode()):
            raise Forbidden("this ticket was not issued for this pack, these chunks and you", code="bad_ticket")
        if expires < time.time():
            raise BadRequest("the plan of this pack has expired: ask for a new one", code="plan_expired")
        stored = await run_in_threadpool(store.ingest_direct, ns_id, pack, chunks, blocks)
        if ctx.config.dedup_scope == "user":
            stored = len(chunks)  # as an upload's: whether the bytes were new to the server is not the caller's business
        return JSONResponse({"received": len(chunks), "stored": stored})

    return [
        Route("/api/v1/blocks/put_plan", put_plan, methods=["POST"]),
        Route("/api/v1/blocks/put_done", put_done, methods=["POST"]),
    ]


__all__ = ["MAX_PUT_CHUNKS", "PUT_PACK_BYTES", "TICKET_SECONDS", "parse_put_chunks", "routes"]
