"""Structured logs: one JSON object per line, and one line per request.

A public link's token is its only secret, so no log line may hold one: the request log shows
``/l/<token>`` (or ``/l/<link ID>`` once the handler knows the link), and, in case anything
else prints a path or URL (an exception, uvicorn's own loggers, a library), every line is
redacted again as it is formatted (`redact`). `configure` sends uvicorn's loggers through the
same formatter; `cubby.server.run` starts uvicorn with ``log_config=None`` so that it keeps them.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import orjson
from starlette.types import Scope

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}


_LINK = re.compile(r"""(^|[\s"'(=,;]|://[^/\s"']*)/l/(?!<)[^/\s"'?#<>]+""")
LINK_PLACEHOLDER = "/l/<token>"


def redact(text: str) -> str:
    """``text`` with the token of every ``/l/TOKEN`` path or URL replaced by ``<token>``."""
    return _LINK.sub(lambda m: m.group(1) + LINK_PLACEHOLDER, text) if "/l/" in text else text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode())


def configure(level: str = "INFO") -> None:
    """JSON lines on stderr for cubby's loggers, uvicorn's (warnings and up) and anything
    else that reaches the root logger, all through `redact`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name, lvl in (("cubby", level), ("uvicorn", "WARNING"), ("", "WARNING")):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(lvl)
        if name:
            logger.propagate = False


ACCESS_LOGGER = "cubby.access"


def log_request(
    log: logging.Logger, scope: Scope, status: int, seconds: float, received: int, sent: int
) -> None:
    """The request's one log line: method, path, status, duration, user and bytes.

    A handler may have put a redacted path in ``scope["state"]["log_path"]`` (public links
    keep their token out of logs), the user (`access`) and the error code (`errors`) beside
    it. The record is built directly (``makeRecord`` + ``handle``), not through
    ``Logger.info``, which walks the stack for the caller's file and line on every call: the
    formatter prints neither, so the line is the same and the walk was wasted."""
    if not log.isEnabledFor(logging.INFO):
        return
    state = scope.get("state") or {}
    extra = {
        "method": scope["method"],
        "path": state.get("log_path") or redact(scope["path"]),
        "status": status or 500,
        "duration_ms": round(seconds * 1000, 2),
        "user_id": state.get("user_id"),
        "error_code": state.get("error_code"),
        "bytes_in": received,
        "bytes_out": sent,
    }
    log.handle(log.makeRecord(log.name, logging.INFO, "(unknown file)", 0, "request", (), None, extra=extra))
