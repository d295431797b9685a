"""The error types of cubby.

Every error a person or a script can meet is a `CubbyError` subclass with a stable machine
``code`` and an HTTP ``status``. The server maps them to responses in one place
(`cubby.server.errors`), the HTTP client maps responses back to the same types, and the CLI
prints ``message``, which says what to do about it.
"""

from __future__ import annotations

from typing import Any


class CubbyError(Exception):
    """Root of all cubby errors. ``retryable`` says whether the same request may succeed later."""

    code: str = "error"
    status: int = 500
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(CubbyError):
    """The request is malformed; sending it again unchanged will fail again."""

    code = "bad_request"
    status = 400


class InvalidPath(BadRequest):
    """A path escapes its root, holds NUL or empty components, or is too long."""

    code = "invalid_path"


class ChunkMismatch(BadRequest):
    """Bytes offered under a chunk name do not hash to that name; nothing was stored."""

    code = "chunk_hash_mismatch"


class SizeMismatch(BadRequest):
    """A declared size disagrees with the chunks that make it up."""

    code = "size_mismatch"


class PayloadTooLarge(CubbyError):
    code = "payload_too_large"
    status = 413


class Unauthorized(CubbyError):
    """No token, an unknown token or a revoked one."""

    code = "unauthorized"
    status = 401


class Forbidden(CubbyError):
    """The caller can see the target but may not do this to it (a viewer writing, say)."""

    code = "forbidden"
    status = 403


class AccountDisabled(Unauthorized):
    """A disabled user's token, password or session (`cubby user disable`). A dead credential
    to everything that handles one (a WebSocket closes with 4401, a client stops), but
    answered 403, not 401: the credential is right, and another will not help. Only a right
    credential ever learns that an account is disabled."""

    code = "account_disabled"
    status = 403


class NotFound(CubbyError):
    """Nothing there, or nothing the caller may know about: the two are deliberately alike."""

    code = "not_found"
    status = 404


class NamespaceGone(NotFound):
    """The database asked holds no such namespace: it never existed, or it moved to another
    shard after the caller looked up where it lives (then a fresh lookup finds it). The code
    stays ``not_found`` for clients."""


class Conflict(CubbyError):
    """The state changed under the caller (stale revision, name taken); re-read and decide."""

    code = "conflict"
    status = 409


class NamespaceMoved(Conflict):
    """The folder this request resolved into became a shared folder (its own namespace) before
    the request could commit. Nothing changed: resolve the path again and retry."""

    code = "namespace_moved"
    retryable = True


class TooManyRequests(CubbyError):
    """The caller holds too many of something at once (connections, waiting requests); retry
    once some of them ended."""

    code = "too_many_requests"
    status = 429
    retryable = True


class Unavailable(CubbyError):
    """A transient failure: the same request may succeed if retried after a pause."""

    code = "unavailable"
    status = 503
    retryable = True


class NamespaceMoving(Unavailable):
    """The namespace is being moved to another database shard (`cubby admin move-namespace`)
    and its old copy no longer takes writes. Nothing changed: the same request succeeds once
    the move is done, a moment later (the server retries it for a while before answering)."""

    code = "namespace_moving"


class InsufficientStorage(CubbyError):
    """The server ran out of disk space (for chunks or for its database): nothing of the
    request was kept. It is not retried at once; it may succeed once space is freed."""

    code = "insufficient_storage"
    status = 507


class WrongRole(CubbyError):
    """The route exists, but another role of the deployment serves it (``details``: ``role``,
    and ``url`` where known). Clients ask ``/api/v1/discovery`` and send it there."""

    status = 421
    code = "wrong_role"


ERRORS_BY_CODE: dict[str, type[CubbyError]] = {
    cls.code: cls
    for cls in (
        CubbyError,
        BadRequest,
        InvalidPath,
        ChunkMismatch,
        SizeMismatch,
        PayloadTooLarge,
        Unauthorized,
        Forbidden,
        AccountDisabled,
        NotFound,
        Conflict,
        NamespaceMoved,
        TooManyRequests,
        Unavailable,
        NamespaceMoving,
        InsufficientStorage,
        WrongRole,
    )
}


def error_from_dict(body: dict[str, Any], status: int) -> CubbyError:
    """Rebuild the error a server sent, keeping its code even when no class matches it."""
    code = str(body.get("code", "error"))
    message = str(body.get("message", f"server answered {status}"))
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        cls = next((c for c in ERRORS_BY_CODE.values() if c.status == status), CubbyError)
    err = cls(message, code=code, **(body.get("details") or {}))
    return err
