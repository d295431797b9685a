"""The one place where errors become HTTP responses."""

from __future__ import annotations

import logging
import re

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from cubby.blockstore.objects import ObjectStoreError
from cubby.errors import CubbyError

log = logging.getLogger("cubby.server")
_PARAM = re.compile(r"{[^}]*}")

STORAGE_FAILED = (
    "the server's block storage failed or did not answer in time; try again shortly "
    "(what was acknowledged before is safe; the server's log says what failed)"
)
"""What a client is told when the block store fails in a way that may pass: the store's own
message names the bucket, the endpoint and the object, which are the operator's business, so it
goes to the log."""
STORAGE_REFUSED = (
    "the server's block storage refused the request (a fault of the server's set-up, which its "
    "log names; what was acknowledged before is safe): tell the server's operator"
)
"""The same for a failure that will not pass by itself (a missing bucket, refused credentials)."""


def error_response(exc: CubbyError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.retryable:
        headers = {**(headers or {}), "Retry-After": "1"}
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


async def cubby_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CubbyError)
    request.state.error_code = exc.code
    if isinstance(exc, ObjectStoreError):
        log.warning("block store failed", extra={"path": request.url.path, "error": exc.message})
        answer = ObjectStoreError(STORAGE_FAILED if exc.retryable else STORAGE_REFUSED)
        answer.retryable = exc.retryable
        return error_response(answer)
    return error_response(exc)


def allowed_methods(request: Request, *, ignore: object = None) -> str:
    """Every method the routes that serve this path answer (RFC 9110 asks a 405 to list them
    all; the router names only those of the first route that matched). When several routes
    match, the most specific win, the ones with the longest literal text: ``/blocks/fetch``
    over ``/blocks/{hash}``, and anything over a catch-all; routes whose endpoint is
    ``ignore`` do not count."""
    matching = [
        r for r in request.app.router.routes
        if isinstance(r, Route) and r.methods and r.endpoint is not ignore
        and r.matches(request.scope)[0] != Match.NONE
    ]
    if not matching:
        return ""

    def literal(r: Route) -> int:
        return len(_PARAM.sub("", r.path))

    best = max(literal(r) for r in matching)
    return ", ".join(sorted({m for r in matching if literal(r) == best for m in r.methods or ()}))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    return JSONResponse({"code": code, "message": str(exc.detail)}, status_code=exc.status_code, headers=headers)


CLIENT_GONE = 499
"""The status logged for a request whose client went away before it was whole (nginx's
"client closed request"): never sent, since nobody is there to read it."""


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client closed its connection before its request was whole: a dropped network, an
    upload cancelled, a body closed to make room (`cubby.server.budget`). Nothing went wrong
    in the server, so it is no 500 and no traceback (before, every upload cut off mid-body
    logged two, some 6 KB of error lines that anybody could make by closing sockets); the
    access log and the metrics count it as 499 ``client_gone``."""
    request.state.error_code = "client_gone"
    return JSONResponse({"code": "client_gone", "message": "the client closed the connection"}, status_code=CLIENT_GONE)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"path": request.url.path})
    return JSONResponse(
        {"code": "internal", "message": "the server failed to handle this request; it was logged"}, status_code=500
    )


HANDLERS = {
    CubbyError: cubby_error, HTTPException: http_error, ClientDisconnect: client_gone, Exception: internal_error,
}
