"""Structured logs: one JSON object per line, and one line per request."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}


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
        return json.dumps(out, default=str)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("cubby")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class RequestLog:
    """ASGI middleware: logs method, path, status, duration, user and bytes of every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger("cubby.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        sent = 0
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            msg = await receive()
            received += len(msg.get("body", b""))
            return msg

        async def counting_send(msg: Message) -> None:
            nonlocal status, sent
            if msg["type"] == "http.response.start":
                status = msg["status"]
            elif msg["type"] == "http.response.body":
                sent += len(msg.get("body", b""))
            await send(msg)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            state = scope.get("state", {})
            self.log.info(
                "request",
                extra={
                    "method": scope["method"],
                    # A handler may give a redacted path (public links keep their token out of logs).
                    "path": state.get("log_path", scope["path"]),
                    "status": status or 500,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                    "user_id": state.get("user_id"),
                    "error_code": state.get("error_code"),
                    "bytes_in": received,
                    "bytes_out": sent,
                },
            )
