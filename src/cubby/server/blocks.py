"""The blocks role: chunk upload (verified), proof of possession, chunk download, and whole-file
download by path with HTTP Range.

A chunk is served only to a caller who can read a namespace that holds it (`chunk_readable`),
so knowing a hash is never enough to download it.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from cubby.blockstore.base import BlockStore, Plain
from cubby.blockstore.direct import HandsOutReads
from cubby.blockstore.opener import folder_of, offers_direct_puts
from cubby.core import frames
from cubby.core.chunking import MAX_SIZE
from cubby.core.compression import CorruptChunk
from cubby.core.hashing import is_chunk_name
from cubby.errors import BadRequest, CubbyError, NotFound
from cubby.metadata.possession import parse_alg, parse_claims
from cubby.model import ChunkRef, Entry
from cubby.server import access
from cubby.server.bodies import (
    LIST_JSON,
    SUNK,
    field_hash,
    field_int,
    frame_sink,
    json_body,
    query_int,
    require_content_type,
    stream_capped,
)
from cubby.server.budget import BodyBudget
from cubby.server.context import ServerContext
from cubby.server.possession import RejectPacer, first_for

INGEST_BATCH_BYTES = 16 * 1024 * 1024
FETCH_HOP_BYTES = 4 * 1024 * 1024
"""Chunks taken from the block store per hop to a worker thread while a fetch streams: a hop
per chunk cost more thread wake-ups than reading the chunk (measured, bench/README.md)."""
MAX_FETCH = 4096
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class ChunkNameConvertor(Convertor[str]):
    """``{hash:chunk}``: a path segment of 64 characters. It keeps ``/blocks/fetch`` and its
    siblings from also matching ``/blocks/{hash}`` (so a GET there is a 405, not a bad hash);
    the handler still checks that the 64 characters are lowercase hex."""

    regex = "[^/]{64}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class RangeNotSatisfiable(CubbyError):
    code = "range_not_satisfiable"
    status = 416


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for a single ``bytes=`` range, None for the whole file."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None  # unknown or multi-range forms: RFC 9110 lets us answer with the whole file
    first_s, last_s = m.groups()
    if first_s == "":
        n = int(last_s)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(f"the file has {size} bytes; cannot serve the last {n}")
        return max(0, size - n), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if first >= size or last < first:
        raise RangeNotSatisfiable(f"range {header} is outside the file's {size} bytes")
    return first, min(last, size - 1)


T = TypeVar("T")


async def primed(body: AsyncIterator[T]) -> AsyncIterator[T]:
    """``body`` with its first piece read already, before the answer's status goes out.

    Why: a streamed answer sends its status and headers before the body's first piece is
    made, so a block store that fails on the first read (down, or taking requests and never
    answering) turned into a 200 whose body was cut at 0 bytes, which a client could only call
    a truncated answer. Read first, that failure is the answer it is (503
    ``object_store_error``, retryable; 404 for a chunk that is not there). A failure after the
    first piece still cuts the body, which every client detects by its length."""
    try:
        first = await anext(body)
    except StopAsyncIteration:
        return body  # an empty body, ended: it yields nothing more

    async def rest() -> AsyncIterator[T]:
        yield first
        async for piece in body:
            yield piece

    return rest()


async def file_response(
    request: Request, entry: Entry, chunks: Sequence[ChunkRef], blocks: BlockStore, headers: dict[str, str] | None = None
) -> Response:
    """Stream one file revision, chunk by chunk, honouring ``Range``, ``If-Range`` and
    ``If-None-Match`` (the ETag is the content hash). Shared by the authenticated content route
    and public links, so both serve files the same way; ``headers`` are added to the answer.
    The first piece is read before the status is sent (`primed`)."""
    size = entry.size
    etag = f'"{entry.content_hash}"'
    out = {"Accept-Ranges": "bytes", "ETag": etag, "X-Cubby-Rev": str(entry.rev), **(headers or {})}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=out)
    rng = parse_range(request.headers.get("range"), size)
    if_range = request.headers.get("if-range")
    if rng is not None and if_range and if_range != etag:
        rng = None  # the client's partial copy is of another version: send it all
    first, last = rng if rng is not None else (0, size - 1)
    length = max(0, last - first + 1)
    out["Content-Length"] = str(length)
    status = 200
    if rng is not None:
        status = 206
        out["Content-Range"] = f"bytes {first}-{last}/{size}"
    filename = entry.name.replace('"', "")
    out["Content-Disposition"] = f"attachment; filename*=UTF-8''{_quote(filename)}"
    if request.method == "HEAD":  # what a GET would send, without reading a single chunk
        return Response(status_code=status, headers=out, media_type="application/octet-stream")

    async def stream() -> AsyncIterator[Plain]:
        wanted: list[tuple[ChunkRef, int]] = []  # the chunks in the range, and where each starts
        offset = 0
        for c in chunks:
            start, end = offset, offset + c.size  # this chunk covers [start, end)
            offset = end
            if end > first and start <= last:
                wanted.append((c, start))
        # Read through `read_many` (one lookup and a few large reads per part, as `fetch`),
        # a part of at most MAX_FETCH chunks at a time.
        for i in range(0, len(wanted), MAX_FETCH):
            part = wanted[i : i + MAX_FETCH]
            got = blocks.read_many([c.hash for c, _ in part])
            for c, start in part:
                item = await run_in_threadpool(next, got, None)
                if item is None:
                    raise NotFound(f"chunk {c.hash} was not read")
                yield item[1][max(0, first - start) : min(c.size, last + 1 - start)]

    return StreamingResponse(await primed(stream()), status_code=status, headers=out, media_type="application/octet-stream")


def asked_hashes(body: dict[str, object]) -> list[str]:
    """The ``hashes`` of a fetch or a locate: 1 to `MAX_FETCH` chunk names, else `BadRequest`."""
    hashes = body.get("hashes")
    if not isinstance(hashes, list) or not hashes or len(hashes) > MAX_FETCH:
        raise BadRequest(f"field 'hashes' must be a list of 1 to {MAX_FETCH} chunk hashes", field="hashes")
    return [field_hash(h, "each hash") for h in hashes]


def take_bytes(items: Iterator[tuple[str, Plain]], limit: int) -> list[tuple[str, Plain]]:
    """The next items of ``items`` up to about ``limit`` bytes (at least one; none at its end)."""
    out: list[tuple[str, Plain]] = []
    size = 0
    while size < limit:
        item = next(items, None)
        if item is None:
            break
        out.append(item)
        size += len(item[1])
    return out


FETCHES_FROM_DISK = 2
"""Requests of one download a client is advised to keep in flight when the chunks come from
the local disk (`locate`'s ``fetches``): one is written while the next is read. Four were no
faster here (1 GiB `cubby get`, eight alternated rounds: paired ratio 1.00) and held twice the
memory."""
FETCHES_FROM_OBJECTS = 4
"""The same when the chunks come from object storage, where each window waits for ranged GETs
whose round trips two requests in flight do not hide: a 1 GiB `cubby get` from Ceph RGW took
2.46 s with four against 2.70 with two through the server (6 of 6 alternated rounds faster),
2.00 against 2.17 read straight from the bucket (6 of 6)."""


def routes(ctx: ServerContext) -> list[BaseRoute]:
    register_url_convertor("chunk", ChunkNameConvertor())
    store = ctx.store
    blocks: BlockStore = ctx.blocks  # type: ignore[assignment]
    limit = ctx.config.max_request_bytes
    remote = folder_of(ctx.config.blocks_location) is None
    pacer = RejectPacer(first_seconds=first_for(remote))
    fetches = FETCHES_FROM_OBJECTS if remote else FETCHES_FROM_DISK
    puts = offers_direct_puts(ctx.config.blocks_location)
    uploads = BodyBudget(ctx.config.max_buffered_uploads, grace=ctx.config.header_timeout)
    ctx.metrics.watch_budget("upload", lambda: uploads.held)

    async def upload(request: Request) -> Response:
        p = await access.principal(request, ctx)
        ns_id = query_int(request, "ns_id", p.root_ns, minimum=1)
        access.check_namespace(p, ns_id, write=True)
        require_content_type(request, frames.CONTENT_TYPE)
        # Chunks are not hashed here: `ingest_chunks` hands each batch to the block store's
        # `put_many`, which verifies every chunk against its name before writing any (the one
        # verification on the server; hashing here as well would double the server's work).
        # What the body holds in memory (its whole frames not yet stored, and a frame's first
        # part) is counted against the process's budget for uploads (`cubby.server.budget`) as
        # it arrives, and given back as it is stored: without it, connections that each send
        # most of a batch and then nothing made the server hold 20 MiB apiece.
        # The body is read off the socket into each chunk's own buffer where the server in
        # front can hand it over (`cubby.server.framesink`: no copies, a wake-up per batch of
        # frames), as the network delivers it otherwise (`stream_capped`, `FrameReader`).
        batch: list[tuple[str, bytes]] = []
        batch_bytes = received = stored = 0
        with uploads.holding(request.scope) as share:

            async def store_batch() -> None:
                nonlocal batch, batch_bytes, received, stored
                with uploads.servers_turn(share):
                    stored += await run_in_threadpool(store.ingest_chunks, ns_id, batch, blocks)
                received += len(batch)
                uploads.give(share, batch_bytes + frames.HEADER.size * len(batch))
                batch, batch_bytes = [], 0

            async def room(n: int, arrived: int = 0) -> None:
                if batch and uploads.held + n > uploads.limit:
                    await store_batch()  # room of its own first, before asking for others'
                await uploads.take(share, n, patient=True, arrived=arrived)

            def arrived(n: int) -> None:
                share.received += n

            async def add(got: list[tuple[str, bytes]]) -> None:
                nonlocal batch_bytes
                for name, data in got:
                    batch.append((name, data))
                    batch_bytes += len(data)
                    if batch_bytes >= INGEST_BATCH_BYTES:
                        await store_batch()

            reserve = functools.partial(uploads.try_take, share)
            sink = frame_sink(request, limit, reserve=reserve, arrived=arrived, max_frame=MAX_SIZE)
            if sink is not None:
                try:
                    while (got := await sink.frames(room)) is not None:
                        await add(got)  # type: ignore[arg-type]  # bytearrays, kept by the store as they are
                finally:
                    sink.abandon()
                    request.scope[SUNK] = sink.received
                await request.receive()  # the body's end, for the front (`cubby.server.unread`)
            else:
                reader = frames.FrameReader()
                async for piece in stream_capped(request, limit):
                    await room(len(piece), len(piece))
                    await add(reader.feed(piece))
                reader.close()
            if batch:
                await store_batch()
        if ctx.config.dedup_scope == "user":
            # Whether the bytes were new to the *server* is another user's business here.
            stored = received
        return JSONResponse({"received": received, "stored": stored})

    async def prove(request: Request) -> Response:
        """Everything the caller sent is checked before any chunk is looked up; then every
        claim costs the same hashing and, after `RejectPacer.pad`, the same time, whether or
        not the server holds the chunk (see cubby.metadata.possession)."""
        p = await access.principal(request, ctx)
        body = await json_body(request, LIST_JSON)
        ns_id = field_int(body, "ns_id", minimum=1) or 0
        access.check_namespace(p, ns_id, write=True)
        # No "alg": a client from before requests named one, which sends SHA-256(nonce || bytes).
        claims = parse_claims(body.get("proofs"), max_entries=MAX_FETCH, alg=parse_alg(body.get("alg"), present="alg" in body))
        within = list(access.mounts(p).values()) if ctx.config.dedup_scope == "user" else None
        started = time.perf_counter()
        checked = await run_in_threadpool(store.accept_proofs, p.user_id, ns_id, claims, blocks, within=within)
        if within is None:
            # Global dedup reads chunks other users stored: pad so that the time does not say
            # which. With per-user dedup only the caller's own readable chunks are ever read,
            # and their presence is no secret from the caller, so nothing is padded. The pad
            # counts from before the check's thread was handed the work, not from the check's
            # own clock (`Checked.spent`): what a held read costs after that clock (its bytes
            # freed, the way back to this loop) showed as 0.1-0.3 ms more for a held chunk.
            await pacer.pad((c.size for c in claims), checked.reads, time.perf_counter() - started)
        # ``direct_puts`` (only where true, so that every other answer is as it was): the
        # refused chunks may go to the bucket in a pack of the client's own
        # (`cubby.server.bucketputs`); told here, where every upload begins, so that a client
        # asks for a pack only of a server that may hand one out.
        answer = {"accepted": checked.proven, "rejected": checked.rejected}
        return JSONResponse({**answer, "direct_puts": True} if puts else answer)

    async def readable_or_404(p: access.Principal, hashes: list[str]) -> dict[str, int]:
        """The size of each of ``hashes`` (its ``blocks`` row), all of which ``p`` may read,
        else `NotFound` naming the first one it may not."""
        sizes = await run_in_threadpool(store.readable_sizes, list(access.mounts(p).values()), hashes)
        missing = [h for h in hashes if h not in sizes]
        if missing:
            raise NotFound(f"chunk {missing[0]} is not in any folder you can read", missing=len(missing))
        return sizes

    async def fetch(request: Request) -> Response:
        """The chunks asked for, as frames, in one body whose length is stated up front.

        Why a Content-Length and not chunked encoding: the chunks' sizes are known before any
        is read (their ``blocks`` rows, read with the access check), and uvicorn writes each
        piece of a chunked body as a join of its size line, the piece and a CRLF, one more
        copy of every byte (14% of the server's CPU on a download, bench/README.md, branch
        getserver). A chunk the store cannot read, or whose length is not its row's, stops
        the answer mid-body: the connection is closed and the client sees a body cut short
        (an error), never a frame of the wrong length; in the first piece (`primed`), it is
        the answer's error instead."""
        p = await access.principal(request, ctx)
        hashes = asked_hashes(await json_body(request, LIST_JSON))
        sizes = await readable_or_404(p, hashes)
        length = sum(frames.HEADER.size + sizes[h] for h in hashes)

        async def stream() -> AsyncIterator[Plain]:
            # One lookup and a few large concurrent reads for the whole request (`read_many`),
            # not a lookup and a read per chunk. The server does not hash what it reads here:
            # the client hashes every chunk it receives (`ApiClient.fetch_chunks`), so a second
            # hash would only double the CPU of a download (a chunk that does not decode is
            # still refused). Chunks cross from the read thread a few MiB at a time, and each
            # frame goes out as its header and its bytes (an uncompressed chunk as a view of
            # the pack read that holds it), not as a copy of both.
            chunks = blocks.read_many(hashes, verify=False)
            while batch := await run_in_threadpool(take_bytes, chunks, FETCH_HOP_BYTES):
                for name, data in batch:
                    if len(data) != sizes[name]:
                        raise CorruptChunk(f"stored chunk {name} is not the length its row records; not served")
                    yield frames.header(name, len(data))
                    yield data

        return StreamingResponse(
            await primed(stream()), media_type=frames.CONTENT_TYPE, headers={"Content-Length": str(length)}
        )

    async def locate(request: Request) -> Response:
        """Where the chunks asked for can be read straight from the bucket, for a client that
        may read them all (the same check as `fetch`): ``{"direct": true, "reads": [{"url",
        "headers", "chunks": [[name, stored length, size], ...]}], "fetch": [names]}``, each
        read's bytes being its chunks back to back as stored (`cubby.core.compression`: a codec
        byte and a payload), and ``fetch`` the chunks to ask `fetch` for instead; or
        ``{"direct": false}`` where the block store hands out no reads (the default:
        ``downloads=proxied``), and the client fetches everything. What a read may cover,
        and why: `cubby.blockstore.direct`. Either answer advises how many of one download's
        requests (`fetch`, or the plans and reads of the windows) to keep in flight,
        ``fetches`` (`FETCHES_FROM_OBJECTS`, `FETCHES_FROM_DISK`)."""
        p = await access.principal(request, ctx)
        hashes = list(dict.fromkeys(asked_hashes(await json_body(request, LIST_JSON))))
        if not isinstance(blocks, HandsOutReads):
            return JSONResponse({"direct": False, "fetches": fetches})
        sizes = await readable_or_404(p, hashes)
        plan = await run_in_threadpool(blocks.direct_reads, hashes)
        if plan is None:
            return JSONResponse({"direct": False, "fetches": fetches})
        reads, fetch = [], list(plan.fetch)
        for read in plan.reads:  # a chunk whose location disagrees with its row: `fetch` refuses it
            if all(sizes[name] == size for name, _, size in read.chunks):
                reads.append(read)
            else:
                fetch += [name for name, _, _ in read.chunks]
        return JSONResponse(
            {"direct": True, "reads": [r.to_wire() for r in reads], "fetch": fetch, "fetches": fetches},
            headers={"Cache-Control": "no-store"},
        )

    async def one_chunk(request: Request) -> Response:
        p = await access.principal(request, ctx)
        h = request.path_params["hash"]
        if not is_chunk_name(h):
            raise BadRequest("a chunk is named by its lowercase hex SHA-256 (64 characters)")
        await readable_or_404(p, [h])
        data = await run_in_threadpool(blocks.get, h)
        return Response(data, media_type="application/octet-stream", headers={"ETag": f'"{h}"'})

    async def content(request: Request) -> Response:
        p = await access.principal(request, ctx)
        t = access.resolve(p, "/" + request.path_params["path"])
        rev = query_int(request, "rev", 0, minimum=0) or None
        entry, chunks = await run_in_threadpool(store.blocklist, t.ns_id, t.path, rev)
        return await file_response(request, entry, chunks, blocks)

    from cubby.server import bucketputs, deltas

    return [
        *deltas.routes(ctx),
        *bucketputs.routes(ctx),
        Route("/api/v1/blocks/upload", upload, methods=["POST"]),
        Route("/api/v1/blocks/prove", prove, methods=["POST"]),
        Route("/api/v1/blocks/fetch", fetch, methods=["POST"]),
        Route("/api/v1/blocks/locate", locate, methods=["POST"]),
        Route("/api/v1/blocks/{hash:chunk}", one_chunk, methods=["GET"]),
        Route("/api/v1/content/{path:path}", content, methods=["GET", "HEAD"]),
    ]


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


__all__ = ["FETCHES_FROM_DISK", "FETCHES_FROM_OBJECTS", "ChunkRef", "file_response", "parse_range", "primed", "routes"]
