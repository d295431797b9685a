"""Configuration, read once at the edge and passed down.

`Config` holds everything the server and the client need. The CLI builds it from flags, the
environment (``CUBBY_URL``, ``CUBBY_TOKEN``, ``CUBBY_DATA``, ``CUBBY_DB``,
``CUBBY_BROKER``, ``CUBBY_BLOCKS``) and an optional
TOML file (``~/.config/cubby/config.toml``); nothing below the CLI reads the environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8765


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("./cubby-data")
    db_url: str | None = None
    """SQLAlchemy URL of the metadata database; None means SQLite at data_dir/meta.db."""
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    listen_fd: int | None = None
    """Serve on this already-bound listening socket (from a supervisor, or a test that bound
    port 0 and keeps the socket so the port is never free for another process to take)."""
    roles: tuple[str, ...] = ("meta", "blocks", "notify")
    url: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    token: str | None = None
    gc_grace_seconds: float = 24 * 3600
    max_request_bytes: int = 64 * 1024 * 1024
    broker_url: str = "memory"
    """Where commits are announced to notification processes: ``memory`` (one process),
    ``redis://HOST:PORT/DB`` or ``nats://HOST:PORT`` (optionally ``?prefix=NAME``)."""
    notify_front: str = "lean"
    """How ``--role notify`` alone is served: ``lean`` (`cubby.notify.wire`, cheap idle
    connections) or ``asgi`` (uvicorn + Starlette, like the other roles)."""
    auto_accept_shares: bool = False
    """Mount a folder in an invitee's tree as soon as it is shared with them (a team server
    whose users trust each other), instead of waiting for ``cubby share accept``."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks of load balancers whose ``X-Forwarded-For`` (or PROXY protocol
    header) names the real client; see `cubby.server.peers`. Nobody else's is believed."""
    blocks_url: str | None = None
    """Where chunk packs live: a folder, or ``s3://BUCKET/PREFIX?endpoint=…&region=…``
    (`cubby.blockstore.objects.open_object_store`); None means the folder data_dir/blocks."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def metadata_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'meta.db').resolve()}"

    @property
    def blocks_dir(self) -> Path:
        return self.data_dir / "blocks"

    @property
    def blocks_location(self) -> str:
        return self.blocks_url or str(self.blocks_dir)

    def with_(self, **changes: Any) -> Config:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def default_config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cubby" / "config.toml"


def load(env: Mapping[str, str], file: Path | None = None) -> Config:
    """Build a Config from a TOML file (if present) overlaid by the environment."""
    cfg = Config()
    path = file or default_config_file()
    values: dict[str, Any] = {}
    if path.is_file():
        with path.open("rb") as fh:
            values = tomllib.load(fh)
    if env.get("CUBBY_URL"):
        values["url"] = env["CUBBY_URL"]
    if env.get("CUBBY_TOKEN"):
        values["token"] = env["CUBBY_TOKEN"]
    if env.get("CUBBY_DATA"):
        values["data_dir"] = env["CUBBY_DATA"]
    if env.get("CUBBY_DB"):
        values["db_url"] = env["CUBBY_DB"]
    if env.get("CUBBY_AUTO_ACCEPT_SHARES"):
        values["auto_accept_shares"] = env["CUBBY_AUTO_ACCEPT_SHARES"].lower() in ("1", "true", "yes", "on")
    if env.get("CUBBY_BROKER"):
        values["broker_url"] = env["CUBBY_BROKER"]
    if env.get("CUBBY_BLOCKS"):
        values["blocks_url"] = env["CUBBY_BLOCKS"]
    known = {k: v for k, v in values.items() if k in Config.__dataclass_fields__}
    if "data_dir" in known:
        known["data_dir"] = Path(known["data_dir"]).expanduser()
    if "roles" in known:
        known["roles"] = tuple(known["roles"])
    extra = {k: v for k, v in values.items() if k not in Config.__dataclass_fields__}
    return replace(cfg, **known, extra=extra)
