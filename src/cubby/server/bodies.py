"""Reading and checking request bodies: size caps, content types, and typed fields.

Nothing here trusts Content-Length: bodies are read as a stream and cut off at the cap.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from cubby.core.hashing import is_chunk_name
from cubby.errors import BadRequest, CubbyError, PayloadTooLarge

MAX_JSON_BYTES = 64 * 1024 * 1024


class UnsupportedMediaType(CubbyError):
    code = "unsupported_media_type"
    status = 415


def require_content_type(request: Request, expected: str) -> None:
    got = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if got != expected:
        raise UnsupportedMediaType(f"send this request with Content-Type: {expected} (got {got or 'none'!r})")


async def read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is larger than the {limit}-byte limit")
    buf = bytearray()
    async for piece in request.stream():
        buf += piece
        if len(buf) > limit:
            raise PayloadTooLarge(f"the body is larger than the {limit}-byte limit")
    return bytes(buf)


async def json_body(request: Request, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    require_content_type(request, "application/json")
    raw = await read_capped(request, limit)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="malformed_json") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_json")
    return body


def field_str(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    v = body.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, str):
        raise BadRequest(f"field '{name}' must be a string", field=name)
    return v


def field_int(body: dict[str, Any], name: str, *, required: bool = True, minimum: int = 0) -> int | None:
    v = body.get(name)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise BadRequest(f"field '{name}' must be an integer >= {minimum}", field=name)
    return v


def field_float(body: dict[str, Any], name: str) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or abs(v) > 1e13:
        raise BadRequest(f"field '{name}' must be a number (seconds since the epoch)", field=name)
    return float(v)


def field_hash(v: Any, what: str) -> str:
    if not is_chunk_name(v):
        raise BadRequest(f"{what} must be a lowercase hex SHA-256 (64 characters)")
    return str(v)


def query_int(request: Request, name: str, default: int, *, minimum: int = 0, maximum: int = 2**62) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter '{name}' must be an integer", field=name) from None
    if not minimum <= v <= maximum:
        raise BadRequest(f"query parameter '{name}' must be between {minimum} and {maximum}", field=name)
    return v


def query_bool(request: Request, name: str) -> bool:
    raw = (request.query_params.get(name) or "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise BadRequest(f"query parameter '{name}' must be true or false", field=name)
