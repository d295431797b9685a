"""The blocks role's delta routes: a changed chunk travels as a delta against an old chunk
(`cubby.core.delta` says which form goes which way, and why).

- ``POST /api/v1/blocks/signatures`` ``{"hashes": [old, ...]}``: signatures of old chunks;
- ``POST /api/v1/blocks/patch?ns_id=N``: frames named by new chunks, each holding the names of
  its base chunks (`delta.pack_patch`: the base is their concatenation) and a patch. Every patch is applied and every result hashed before
  anything is stored: one result that does not match its name refuses the whole request
  (`ChunkMismatch`) and stores nothing. Results are stored as an upload's chunks are;
- ``POST /api/v1/blocks/fetch_delta`` ``{"pairs": [[new, [base, ...]], ...]}``: frames named by
  new chunks; a frame's first byte says what follows: 1, the chunk encoded against the
  concatenated base chunks; 0, the whole chunk (a base is not one the caller may read, or is
  gone, or the base is larger than `delta.BASE_MAX`). A single base may be named as a string.

A client gets nothing here it could not already read: every base must be a chunk of a
namespace the caller can read (the same rule as `/blocks/fetch`), so a signature or a delta
never reveals bytes of a chunk the caller has not proved it holds or cannot read anyway. The
server uses only the BlockStore Protocol (`get`, `put_many`).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from cubby.blockstore.base import BlockStore
from cubby.core import delta, frames
from cubby.core.delta import BASE_MAX, DELTA, MAX_BASES, MAX_SPAN, PATCH_FRAME, WHOLE
from cubby.core.hashing import sha256_hex
from cubby.errors import BadRequest, ChunkMismatch, NotFound, PayloadTooLarge
from cubby.server import access
from cubby.server.bodies import LIST_JSON, field_hash, json_body, query_int, require_content_type
from cubby.server.context import ServerContext


def routes(ctx: ServerContext) -> list[BaseRoute]:
    store = ctx.store
    blocks: BlockStore = ctx.blocks  # type: ignore[assignment]
    limit = ctx.config.max_request_bytes

    async def readable(p: access.Principal, hashes: list[str]) -> set[str]:
        return set(await run_in_threadpool(store.chunk_readable, list(access.mounts(p).values()), hashes))

    def hashes_field(body: dict[str, object], name: str) -> list[str]:
        raw = body.get(name)
        if not isinstance(raw, list) or not raw or len(raw) > MAX_BASES:
            raise BadRequest(f"field '{name}' must be a list of 1 to {MAX_BASES} chunk hashes", field=name)
        return [field_hash(h, f"each of '{name}'") for h in raw]

    async def signatures(request: Request) -> Response:
        p = await access.principal(request, ctx)
        wanted = hashes_field(await json_body(request, LIST_JSON), "hashes")
        ok = await readable(p, wanted)
        out: dict[str, str] = {}
        for h in dict.fromkeys(wanted):
            if h in ok:
                base = await run_in_threadpool(blocks.get, h)
                out[h] = base64.b64encode(await run_in_threadpool(delta.signature, base)).decode()
        return JSONResponse({"signatures": out})

    async def patch(request: Request) -> Response:
        p = await access.principal(request, ctx)
        ns_id = query_int(request, "ns_id", p.root_ns, minimum=1)
        access.check_namespace(p, ns_id, write=True)
        require_content_type(request, frames.CONTENT_TYPE)
        reader = frames.FrameReader(PATCH_FRAME)
        items: list[tuple[str, bytes, tuple[str, ...]]] = []
        total = named = 0
        async for piece in request.stream():
            total += len(piece)
            if total > limit:
                raise PayloadTooLarge(f"the body is larger than the {limit}-byte limit; send fewer patches per request")
            for name, data in reader.feed(piece):
                bases, blob = delta.unpack_patch(data)
                items.append((name, blob, bases))
                named += len(bases)
                if named > MAX_BASES:
                    raise BadRequest(f"at most {MAX_BASES} base chunks per request", code="bad_delta")
        reader.close()
        if not items:
            raise BadRequest("no patches in the body", code="bad_delta")
        ok = await readable(p, [b for _, _, bases in items for b in bases])
        missing = [b for _, _, bases in items for b in bases if b not in ok]
        if missing:
            raise NotFound(f"base chunk {missing[0]} is not in any folder you can read", missing=len(missing))

        def rebuild() -> list[tuple[str, bytes]]:
            out = []
            for name, blob, bases in items:
                data = delta.apply_patch(b"".join(blocks.get(b) for b in bases), blob)
                if sha256_hex(data) != name:
                    raise ChunkMismatch(f"a patch against {bases[0]} does not make chunk {name}; nothing was stored")
                out.append((name, data))
            return out

        built = await run_in_threadpool(rebuild)  # all checked before anything is stored
        stored = await run_in_threadpool(store.ingest_chunks, ns_id, built, blocks)
        return JSONResponse({"received": len(built), "stored": stored})

    async def fetch_delta(request: Request) -> Response:
        p = await access.principal(request, ctx)
        body = await json_body(request, LIST_JSON)
        raw = body.get("pairs")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_BASES:
            raise BadRequest(f"field 'pairs' must be a list of 1 to {MAX_BASES} [new, bases] pairs", field="pairs")
        pairs: list[tuple[str, tuple[str, ...]]] = []
        for pair in raw:
            if not isinstance(pair, list) or len(pair) != 2:
                raise BadRequest("each pair must be [new chunk, [base chunk, ...]]", field="pairs")
            names = [pair[1]] if isinstance(pair[1], str) else pair[1]
            if not isinstance(names, list) or not 1 <= len(names) <= MAX_SPAN:
                raise BadRequest(f"each pair names 1 to {MAX_SPAN} base chunks", field="pairs")
            pairs.append((field_hash(pair[0], "a new chunk"), tuple(field_hash(b, "a base chunk") for b in names)))
        if sum(len(bases) for _, bases in pairs) > MAX_BASES:
            raise BadRequest(f"at most {MAX_BASES} base chunks per request", field="pairs")
        ok = await readable(p, [new for new, _ in pairs] + [b for _, bases in pairs for b in bases])
        missing = [new for new, _ in pairs if new not in ok]
        if missing:
            raise NotFound(f"chunk {missing[0]} is not in any folder you can read", missing=len(missing))

        def one(new: str, bases: tuple[str, ...]) -> bytes:
            data = blocks.get(new)
            if any(b not in ok or b == new for b in bases):
                return WHOLE + data
            base = b"".join(blocks.get(b) for b in bases)
            if len(base) > BASE_MAX:
                return WHOLE + data
            encoded = delta.encode_against(base, data)
            return DELTA + encoded if len(encoded) < len(data) else WHOLE + data

        async def stream() -> AsyncIterator[bytes]:
            for new, bases in pairs:
                yield frames.encode(new, await run_in_threadpool(one, new, bases))

        return StreamingResponse(stream(), media_type=frames.CONTENT_TYPE)

    return [
        Route("/api/v1/blocks/signatures", signatures, methods=["POST"]),
        Route("/api/v1/blocks/patch", patch, methods=["POST"]),
        Route("/api/v1/blocks/fetch_delta", fetch_delta, methods=["POST"]),
    ]
