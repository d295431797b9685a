"""A real cubby server on a loopback port, run by uvicorn in a thread of the test process.

It binds port 0 and reads the port back (never a port picked in advance), and speaks real
HTTP and WebSocket: what the browser tests and the session tests talk to.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import uvicorn

from cubby.config import Config
from cubby.server.app import ROLES, build_app
from cubby.server.context import build_context


class ThreadServer:
    def __init__(self, data_dir: Path, *, roles: Sequence[str] = ROLES, **config: object) -> None:
        self.config = Config(data_dir=Path(data_dir), port=0, **config)  # type: ignore[arg-type]
        self.roles = tuple(roles)
        self.ctx = build_context(self.config, self.roles)
        app = build_app(self.ctx, self.roles)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws="websockets-sansio",
                           ws_ping_interval=None, lifespan="on")
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def add_user(self, name: str, password: str | None = None) -> str:
        """Create a user (and a web password); answers its API token."""
        _, token = self.ctx.store.create_user(name)
        if password is not None:
            self.ctx.store.accounts.set_password(name, password)
        return token

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
