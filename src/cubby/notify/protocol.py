"""What a subscription request must look like, shared by both front ends of the notification
role (the Starlette routes in `cubby.server.notify` and the lean server in
`cubby.notify.wire`), so that they accept and refuse exactly the same input."""

from __future__ import annotations

import json
import random
from typing import Any

from cubby.errors import BadRequest, NotFound, TooManyRequests, Unauthorized
from cubby.model import Principal
from cubby.notify.hub import Wake

MIN_TIMEOUT = 30
MAX_TIMEOUT = 480
JITTER = 0.15
"""A long-poll ends up to this fraction early, so clients that started together spread out."""
MAX_CURSOR = 10_000
MAX_BODY = 1024 * 1024


def parse_cursor(raw: Any, p: Principal) -> dict[int, int]:
    """``{"<ns id>": last journal id read, ...}``; every namespace must be readable by ``p``
    (else 404 ``not_found`` with the namespace id in the details)."""
    if not isinstance(raw, dict) or not raw:
        raise BadRequest(
            "field 'cursor' must be a non-empty object {namespace id: last journal id read}",
            code="bad_cursor", field="cursor",
        )
    if len(raw) > MAX_CURSOR:
        raise BadRequest(f"a cursor may name at most {MAX_CURSOR} namespaces", code="bad_cursor", field="cursor")
    cursor: dict[int, int] = {}
    for key, pos in raw.items():
        if not isinstance(key, str) or not key.isdigit() or len(key) > 18:
            raise BadRequest(f"cursor key {key!r} is not a namespace id", code="bad_cursor", field="cursor")
        if isinstance(pos, bool) or not isinstance(pos, int) or pos < 0:
            raise BadRequest(
                f"cursor position for namespace {key} must be an integer >= 0", code="bad_cursor", field="cursor"
            )
        cursor[int(key)] = pos
    for ns in cursor:
        if not p.can_read(ns):
            raise NotFound(f"namespace {ns} does not exist", ns_id=ns)
    return cursor


def json_object(raw: bytes | str, what: str = "the body") -> dict[str, Any]:
    """``raw`` parsed as a JSON object, or `BadRequest` ``malformed_json`` naming ``what``."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}", code="malformed_json") from exc
    if not isinstance(body, dict):
        raise BadRequest(f'{what} must be a JSON object {{"cursor": {{...}}}}', code="malformed_json")
    return body


def parse_timeout(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not MIN_TIMEOUT <= raw <= MAX_TIMEOUT:
        raise BadRequest(
            f"field 'timeout' must be a number of seconds from {MIN_TIMEOUT} to {MAX_TIMEOUT}",
            code="bad_timeout", field="timeout",
        )
    return float(raw)


def jittered(timeout: float) -> float:
    return timeout * random.uniform(1 - JITTER, 1.0)


def bearer(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer TOKEN' (see 'cubby user add')")
    return token.strip()


def heads_json(heads: dict[int, int]) -> dict[str, int]:
    return {str(ns): h for ns, h in heads.items()}


def longpoll_answer(heads: dict[int, int], wake: Wake, namespaces: list[int]) -> dict[str, Any]:
    changed = bool(wake.heads) or wake.account_changed
    return {
        "changed": changed,
        "heads": heads_json(heads),
        "account_changed": wake.account_changed,
        "namespaces": namespaces,
        "backoff": 0.0 if changed else round(random.uniform(0.0, 1.0), 3),
    }


def info(counts: tuple[int, int, int] | None) -> dict[str, Any]:
    """What the role offers (clients probe it), and for an authenticated caller the counters
    ``(subscribers, namespaces, resyncs)`` for operators and tests: how many people wait here
    is nobody else's business."""
    body: dict[str, Any] = {"transports": ["longpoll", "ws"], "min_timeout": MIN_TIMEOUT, "max_timeout": MAX_TIMEOUT}
    if counts is not None:
        body["subscribers"], body["namespaces"], body["resyncs"] = counts
    return body


class TokenWaits:
    """How many waiting connections (long-polls, WebSockets) each token holds: at most
    ``limit`` at once, so that one leaked or stolen token cannot fill a notification process;
    the next is refused with 429 ``too_many_requests``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[int, int] = {}

    @staticmethod
    def key(p: Principal) -> int:
        """What ``p``'s waits are counted under: its token, or (a web session, which has no
        token id) its user, negated so the two never meet."""
        return p.token_id or -p.user_id

    def take(self, p: Principal) -> int:
        """Count one more waiting connection for ``p``; returns the key to `give` back."""
        key = self.key(p)
        n = self.held.get(key, 0)
        if n >= self.limit:
            raise TooManyRequests(f"this token already holds {n} waiting connections; close some first")
        self.held[key] = n + 1
        return key

    def give(self, key: int) -> None:
        left = self.held.get(key, 1) - 1
        if left > 0:
            self.held[key] = left
        else:
            self.held.pop(key, None)
