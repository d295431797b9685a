"""Reading and checking request bodies: size caps, content types, JSON shape, and typed fields.

Three rules keep a stranger's request cheap (see docs/ARCHITECTURE.md, "Request bodies"):

- No body is read before the caller is known. `access.principal` opens the gate
  (`allow_body`) once the bearer token checks out; `read_capped`, `stream_capped` and
  `json_body` refuse to run on a request whose gate is shut, so a route that forgot to
  authenticate first fails loudly in its tests instead of parsing a stranger's 60 MiB.
  (`cubby.server.unread` then reads at most 64 KiB more of a stranger's unread body before
  answering, and closes the connection rather than drain the rest.) The one exception,
  `early_body`, receives no more than that drain would: a body that declares at most
  `EARLY_BYTES` and arrives within `EARLY_SECONDS`, kept as bytes and parsed only after the
  caller is known (`access.as_writer`), so that authentication and the write share one hop
  to a worker thread.
- Every read names its cap: each route passes the cap that fits what it accepts
  (`SMALL_JSON`, `LIST_JSON`, `COMMIT_JSON`, or the upload's `max_request_bytes`).
  Nothing here trusts Content-Length: bodies are read as a stream and cut off at the cap.
- JSON is strict UTF-8, at most `MAX_JSON_DEPTH` deep (checked on the raw bytes before it is
  parsed, so a 100,000-deep body never becomes 100,000 nested lists), without lone
  surrogates, NaN or Infinity. Integers are bounded by the fields that read them
  (`field_int`, `query_int`, `path_int`: at most `MAX_INT`, what a database BIGINT holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any, Protocol

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.types import Scope

from cubby.core.hashing import is_chunk_name
from cubby.errors import BadRequest, CubbyError, PayloadTooLarge
from cubby.server.budget import lent
from cubby.server.framesink import FrameSink

SMALL_JSON = 64 * 1024
"""A body naming one or two paths and a few fields (mkdir, move, delete, restore, tokens,
shares, links). A path is at most 2,900 bytes, under 9 KB even with every character escaped."""
LIST_JSON = 16 * 1024 * 1024
"""A list of up to 1,000 paths (blocklists) or 4,096 hashes or proofs (fetch, prove)."""
COMMIT_JSON = 32 * 1024 * 1024
"""One commit's chunk list, or a batch of them: about 350,000 chunks (a file of some 350 GB
at the 1 MiB average chunk)."""
MAX_JSON_DEPTH = 32
"""The deepest request is a batch: object, list, commit, chunk list, chunk (5 levels)."""
MAX_INT = 2**63 - 1
"""The largest integer any field accepts: what a signed 64-bit database column holds."""

_GATE = "cubby.body_allowed"
_SINK = "cubby.frame_sink"
"""Scope key: hands the rest of the request's body to a `FrameSink` (`allow_frame_sink`)."""
SUNK = "cubby.sunk"
"""Scope key: bytes of the body a `FrameSink` received (the front logs them with the rest)."""
_EARLY = "cubby.early_body"
"""Scope key: the bytes `early_body` received without the rest of the body (a slow client)."""
EARLY_BYTES = 64 * 1024
"""At most this much of a body is received before authentication (`early_body`): what
`cubby.server.unread` drains from a stranger's request anyway, and uvicorn's flow-control
window, so a stranger still costs no more memory than before."""
EARLY_SECONDS = 0.5
"""`early_body` waits at most this long for the body (as long as `cubby.server.unread`'s drain)."""


class UnsupportedMediaType(CubbyError):
    code = "unsupported_media_type"
    status = 415


def allow_body(request: Request) -> None:
    """Open the gate: the caller is authenticated (or the route is public by design), so its
    body may now be read."""
    request.scope[_GATE] = True


def body_allowed(scope: Scope) -> bool:
    """Whether `allow_body` opened this request's gate (its caller is known)."""
    return bool(scope.get(_GATE))


def _check_gate(request: Request) -> None:
    if not body_allowed(request.scope):
        raise RuntimeError(f"{request.url.path}: a request body was read before the caller was authenticated")


def require_content_type(request: Request, expected: str) -> None:
    got = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if got != expected:
        raise UnsupportedMediaType(f"send this request with Content-Type: {expected} (got {got or 'none'!r})")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the body is larger than the {limit}-byte limit of this route")


def _refuse_declared_over(request: Request, limit: int) -> None:
    """413 at once for a body whose Content-Length says it will be over ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)


async def early_body(request: Request) -> bytes | None:
    """The whole body, received before the caller is known, of a request that declares a
    Content-Length of at most `EARLY_BYTES` (and no ``Expect: 100-continue``, whose client
    sends nothing until asked) and delivers it within `EARLY_SECONDS`; None otherwise.

    Why. A write route that authenticates in one hop to a worker thread and then writes in a
    second pays the hop twice (a thread wake-up each way, ~10% of a single-file commit's
    CPU). With the bytes in hand, `access.as_writer` authenticates, parses and writes in one
    hop. Nothing is parsed here: the bytes are JSON only after the gate opened (`json_of`).
    A stranger gets no more than `cubby.server.unread` drains from their request anyway (the
    same bytes, the same wait). On None, what was received stays with the request, and
    `stream_capped` (after authentication, as always) yields it before the rest."""
    declared = request.headers.get("content-length")
    if (
        declared is None or not declared.isdigit() or int(declared) > EARLY_BYTES
        or request.headers.get("expect", "").lower() == "100-continue" or _EARLY in request.scope
    ):
        return None
    pieces: list[bytes] = []
    done = False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(EARLY_SECONDS):  # one timer; anyio's cancel scope cost more
            while True:
                msg = await request.receive()
                if msg["type"] == "http.disconnect":
                    raise ClientDisconnect()
                pieces.append(msg.get("body", b""))
                if not msg.get("more_body", False):
                    done = True
                    break
    raw = b"".join(pieces)
    if done:
        return raw
    request.scope[_EARLY] = raw  # a slow client: `stream_capped` starts with these bytes
    return None


def json_of(request: Request, raw: bytes) -> dict[str, Any]:
    """`json_body` of a body `early_body` received: only once the caller is known (the gate)."""
    _check_gate(request)
    require_content_type(request, "application/json")
    return _json_object(raw)


def _json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` parsed (`parse_json`), refused unless it is a JSON object."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_json")
    return body


class TakeFrames(Protocol):
    """What `cubby.server.guard` puts in a request's scope to let a route read its body of
    chunk frames off the socket (`cubby.server.framesink`)."""

    def __call__(
        self, scope: MutableMapping[str, Any], *, reserve: Callable[[int], bool],
        arrived: Callable[[int], None], max_frame: int,
    ) -> FrameSink | None: ...


def allow_frame_sink(scope: MutableMapping[str, Any], take: TakeFrames) -> None:
    """Let the route of the request of ``scope`` take its body with ``take`` (`frame_sink`)."""
    scope[_SINK] = take


def frame_sink(
    request: Request, limit: int, *, reserve: Callable[[int], bool], arrived: Callable[[int], None], max_frame: int
) -> FrameSink | None:
    """The rest of the body as chunk frames read straight off the socket (`FrameSink`), only
    after authentication and refused with 413 when its Content-Length is over ``limit``; None
    when the server in front cannot hand it over (then `stream_capped` reads it)."""
    _check_gate(request)
    take: TakeFrames | None = request.scope.get(_SINK)
    if take is None or _EARLY in request.scope:
        return None
    _refuse_declared_over(request, limit)
    return take(request.scope, reserve=reserve, arrived=arrived, max_frame=max_frame)


async def stream_capped(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body as it arrives, refused with 413 once more than ``limit`` bytes came (or the
    declared Content-Length says they will), and only after authentication. (What
    `early_body` received of it first.)"""
    _check_gate(request)
    _refuse_declared_over(request, limit)
    total = 0
    early = request.scope.pop(_EARLY, None)
    if early:
        total += len(early)
        if total > limit:
            raise _too_large(limit)
        yield early
    async for piece in request.stream():
        total += len(piece)
        if total > limit:
            raise _too_large(limit)
        yield piece


async def read_capped(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (`stream_capped`), counted against the process's
    budget of bodies held whole while it arrives (`cubby.server.budget`; none: a request that
    did not come through `cubby.server.front.Front`)."""
    budget = lent(request.scope)
    buf = bytearray()
    if budget is None:
        async for piece in stream_capped(request, limit):
            buf += piece
        return bytes(buf)
    try:
        with budget.holding(request.scope) as share:
            async for piece in stream_capped(request, min(limit, budget.limit)):
                await budget.take(share, len(piece))
                buf += piece
            return bytes(buf)
    except PayloadTooLarge:
        if budget.limit >= limit:
            raise
        raise PayloadTooLarge(
            f"the body is larger than the {budget.limit} bytes this server holds of all bodies at once "
            "(cubby serve --max-buffered-bodies)"
        ) from None


_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS_OR_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")


def json_depth(raw: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest, found without parsing it: escapes
    and then strings are cut out (so brackets inside strings do not count), and what is left
    is reduced to its brackets; every step runs in C, in time linear in the body. The body is
    first reduced to its brackets and quotes (a string's brackets stay between its two quotes,
    so cutting strings out afterwards still removes them): the regex then runs over a tenth of
    a commit batch's bytes, where it was most of the parse's time."""
    if b"\\" in raw:
        raw = _ESCAPE.sub(b"", raw)
    marks = raw.translate(None, _NOT_BRACKETS_OR_QUOTES)
    # With no escapes left, quotes pair up in order and what lies outside them stays; an
    # unterminated string (an odd count) is read as the regex reads it.
    odd = marks.count(b'"') % 2
    brackets = _STRING.sub(b"", marks) if odd else b"".join(marks.split(b'"')[::2])
    # Balanced brackets: each pass cuts every innermost pair, so the passes it takes to empty
    # them are the depth (a split and a few passes: a fifth of the regex's and the running
    # sum's time, on a commit batch). Anything else is counted by the running sum below.
    rest = brackets.translate(_AS_PARENS)
    for depth in range(MAX_JSON_DEPTH + 1):
        if not rest:
            return depth
        rest = rest.replace(b"()", b"")
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> Any:
    """Parse a request's JSON strictly: UTF-8, at most `MAX_JSON_DEPTH` deep, no NaN or
    Infinity, no lone surrogates (which no database or log can store). Every failure is a
    `BadRequest` with code ``malformed_json``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8: {exc.reason} at byte {exc.start}", code="malformed_json") from None
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise BadRequest(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels", code="malformed_json")
    try:
        # orjson first (a commit batch or a prove request is 200 KB of JSON: a third of the
        # standard parser's CPU). What it takes, it reads as the standard parser does, with
        # no NaN and no lone surrogate; an integer beyond 64 bits becomes a float, which
        # every integer field refuses as out of range as before. Whatever it refuses goes
        # through the standard parser below, which accepts or refuses it as it always did.
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        body = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="malformed_json") from None
    if _SURROGATE_ESCAPE.search(raw):
        try:  # pairs decode to one character; a lone half cannot be encoded back
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(
                "the JSON holds a lone UTF-16 surrogate escape (\\ud800-\\udfff): strings must be valid Unicode",
                code="malformed_json",
            ) from None
    return body


async def json_body(request: Request, limit: int) -> dict[str, Any]:
    """A JSON object of at most ``limit`` bytes, read only after authentication (`allow_body`)."""
    require_content_type(request, "application/json")
    return _json_object(await read_capped(request, limit))


def field_str(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    v = body.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, str):
        raise BadRequest(f"field '{name}' must be a string", field=name)
    return v


def field_int(
    body: dict[str, Any], name: str, *, required: bool = True, minimum: int = 0, maximum: int = MAX_INT
) -> int | None:
    v = body.get(name)
    if v is None and not required:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)  # JSON has one kind of number: 3.0 is the integer 3
    if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= maximum:
        raise BadRequest(f"field '{name}' must be an integer from {minimum} to {maximum}", field=name)
    return v


def field_float(body: dict[str, Any], name: str) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) <= 1e13:  # NaN fails it too
        raise BadRequest(f"field '{name}' must be a number (seconds since the epoch)", field=name)
    return float(v)


def field_hash(v: Any, what: str) -> str:
    if not is_chunk_name(v):
        raise BadRequest(f"{what} must be a lowercase hex SHA-256 (64 characters)")
    return str(v)


_INT_TEXT = re.compile(r"-?[0-9]{1,19}")


def _int_text(raw: str, what: str, minimum: int, maximum: int) -> int:
    """An integer written in plain decimal (no spaces, signs other than '-', or underscores)
    within [minimum, maximum]."""
    if not _INT_TEXT.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise BadRequest(f"{what} must be an integer from {minimum} to {maximum}")
    return int(raw)


def query_int(request: Request, name: str, default: int, *, minimum: int = 0, maximum: int = MAX_INT) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return _int_text(raw, f"query parameter '{name}'", minimum, maximum)
    except BadRequest as exc:
        exc.details["field"] = name
        raise


def path_int(request: Request, name: str, *, minimum: int = 1, maximum: int = MAX_INT) -> int:
    """An id in the URL path (``/tokens/{token_id}``): digits only, and within range, so that
    no id ever reaches the database as a number it cannot hold."""
    return _int_text(str(request.path_params[name]), f"'{name}' in the path", minimum, maximum)


def query_bool(request: Request, name: str) -> bool:
    raw = (request.query_params.get(name) or "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise BadRequest(f"query parameter '{name}' must be true or false", field=name)
