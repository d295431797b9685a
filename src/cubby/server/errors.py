"""The one place where errors become HTTP responses."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cubby.errors import CubbyError

log = logging.getLogger("cubby.server")


def error_response(exc: CubbyError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.retryable:
        headers = {**(headers or {}), "Retry-After": "1"}
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


async def cubby_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CubbyError)
    request.state.error_code = exc.code
    return error_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"code": code, "message": str(exc.detail)}, status_code=exc.status_code)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"path": request.url.path})
    return JSONResponse(
        {"code": "internal", "message": "the server failed to handle this request; it was logged"}, status_code=500
    )


HANDLERS = {CubbyError: cubby_error, HTTPException: http_error, Exception: internal_error}
