"""Configuration, read once at the edge and passed down.

`Config` holds everything the server and the client need. The CLI builds it from flags, the
environment (``CUBBY_URL``, ``CUBBY_TOKEN``, ``CUBBY_DATA``, ``CUBBY_DB``,
``CUBBY_BROKER``, ``CUBBY_BLOCKS``) and an optional
TOML file (``~/.config/cubby/config.toml``); nothing below the CLI reads the environment.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cubby.errors import BadRequest

DEFAULT_PORT = 8765


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("./cubby-data")
    db_url: str | None = None
    """SQLAlchemy URL of the metadata database; None means SQLite at data_dir/meta.db. Alone,
    it is the directory and the only shard (``main``); with ``shards``, the directory unless
    ``directory_url`` names one."""
    directory_url: str | None = None
    """The directory database of a sharded deployment (users, tokens, placements, the
    membership copy, the chunk tables: docs/SHARDING.md); None means ``db_url``'s."""
    shards: tuple[str, ...] = ()
    """The shard databases as ``NAME=URL`` (``--shard``, or a ``[shards]`` table of the config
    file); empty means the directory is the only shard, ``main``."""
    place_new: str | None = None
    """The shard new namespaces go to; None means the one holding the fewest."""
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    listen_fd: int | None = None
    """Serve on this already-bound listening socket (from a supervisor, or a test that bound
    port 0 and keeps the socket so the port is never free for another process to take)."""
    roles: tuple[str, ...] = ("meta", "blocks", "notify")
    url: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    token: str | None = None
    max_request_bytes: int = 64 * 1024 * 1024
    broker_url: str = "memory"
    """Where commits are announced to notification processes: ``memory`` (one process),
    ``redis://HOST:PORT/DB`` or ``nats://HOST:PORT`` (optionally ``?prefix=NAME``)."""
    cache_url: str = "memory"
    """The metadata cache (`cubby.cache`): ``memory`` (one process), ``none``,
    ``redis://HOST:PORT/DB`` or ``memcached://HOST:PORT`` (``memcached:///SOCKET``). Several
    processes sharing a database must share a Redis or memcached cache; the password throttles
    keep their counts there too (`cubby.server.throttle`), so that the processes share them."""
    notify_front: str = "lean"
    """How ``--role notify`` alone is served: ``lean`` (`cubby.notify.wire`, cheap idle
    connections) or ``asgi`` (uvicorn + Starlette, like the other roles)."""
    auto_accept_shares: bool = False
    """Mount a folder in an invitee's tree as soon as it is shared with them (a team server
    whose users trust each other), instead of waiting for ``cubby share accept``."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks of load balancers whose ``X-Forwarded-For`` header names the real
    client; see `cubby.server.peers`. Nobody else's is believed."""
    advertise_meta: str | None = None
    """Where clients reach the meta role, told to them by ``/api/v1/discovery`` (None: the
    address a request came in on, when this process serves the role)."""
    advertise_blocks: str | None = None
    """Where clients reach the blocks role (see ``advertise_meta``)."""
    advertise_notify: str | None = None
    """Where clients reach the notify role (see ``advertise_meta``)."""
    public_url: str | None = None
    """The address people reach this server at (``https://files.example.org``), used to build
    link URLs; None means the address of the request that made the link."""
    sync_cache_mb: float = 256
    """The sync client's chunk cache on disk, in MiB (`cubby.client.sync.cache`)."""
    dedup_scope: str = "global"
    """``global``: a chunk any user stored is reused by whoever proves they hold its bytes.
    ``user``: only chunks the same user can already read are reused; everything else is
    uploaded, so nobody can learn whether another user stores some content (docs/SECURITY.md)."""
    blocks_url: str | None = None
    """Where chunk packs live: a folder, or ``s3://BUCKET/PREFIX?endpoint=…&region=…``
    (`cubby.blockstore.objects.open_object_store`); None means the folder data_dir/blocks."""
    header_timeout: float = 10.0
    """Seconds a connection may take to send a request's headers (on the notification front,
    its body too) from the moment it opens or starts the request; then it is closed."""
    idle_timeout: float = 120.0
    """Seconds a connection may stay silent between requests (a WebSocket: between frames;
    clients ping) before it is closed."""
    max_connections: int = 0
    """Open connections per process; 0: the open-file limit less a reserve. At the cap the
    oldest connection that has not sent a request yet makes room."""
    max_connections_per_address: int = 256
    """Open connections per client address (see ``trusted_proxies``)."""
    max_waits_per_token: int = 32
    """Long-polls and WebSockets one token may hold open at once; the next answers 429."""
    max_buffered_bodies: int = 48 * 1024 * 1024
    """Bytes of request bodies one server process holds whole at once, all requests together
    (`cubby.server.budget.BodyBudget`): past it the slowest bodies are closed to make room, or
    with none to close the request is refused with 503 (retry later)."""
    max_buffered_uploads: int = 256 * 1024 * 1024
    """Bytes of chunk uploads one server process holds at once before storing them, all
    uploads together (16 windows of 16 MiB): past it, the slowest are closed to make room, or
    an upload waits for room (then 503)."""

    @property
    def metadata_url(self) -> str:
        """The directory database's URL (with no shards, the only database's)."""
        if self.directory_url:
            return self.directory_url
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'meta.db').resolve()}"

    @property
    def shard_urls(self) -> dict[str, str]:
        """``{name: url}`` of the configured shards (`parse_shards`); empty without any."""
        return parse_shards(self.shards)

    @property
    def blocks_dir(self) -> Path:
        return self.data_dir / "blocks"

    @property
    def blocks_location(self) -> str:
        return self.blocks_url or str(self.blocks_dir)

    def with_(self, **changes: Any) -> Config:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def default_config_file(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cubby" / "config.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML file at ``path``. tomllib is imported here, where there is a file to read,
    not with this module, which every command imports (3 ms of each start)."""
    import tomllib

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


def load(env: Mapping[str, str], file: Path | None = None) -> Config:
    """Build a Config from a TOML file (if present) overlaid by the environment."""
    cfg = Config()
    path = file or default_config_file(env)
    values: dict[str, Any] = {}
    try:
        if path.is_file():
            values = _read_toml(path)
    except OSError as e:  # its permissions, most often: say which file, not a traceback
        raise ConfigError(f"cannot read the configuration file {path}: {e.strerror or e}") from None
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
    return replace(cfg, **_typed(values, path))


SHARD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def parse_shards(entries: tuple[str, ...]) -> dict[str, str]:
    """``NAME=URL`` entries as ``{name: url}``; a malformed entry or a name given twice is a
    `ConfigError` (a shard's name is what the directory records, so a typo must not pass)."""
    out: dict[str, str] = {}
    for entry in entries:
        name, sep, url = entry.partition("=")
        name = name.strip()
        if not sep or not url.strip() or not SHARD_NAME_RE.match(name):
            raise ConfigError(
                f"a shard is NAME=URL (NAME: letters, digits, '_' or '-'), not {entry!r}", key="shards"
            )
        if name in out:
            raise ConfigError(f"shard {name!r} is named twice", key="shards")
        out[name] = url.strip()
    return out


DEDUP_SCOPES = ("global", "user")
"""The values of `Config.dedup_scope`."""


class ConfigError(BadRequest):
    """A config file that names a setting cubby does not have, or gives one a wrong type."""

    code = "bad_config"


def _typed(values: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Check every key and value against `Config`'s fields: a misspelt setting is an error,
    never silently ignored (a typo in ``public_url`` would otherwise build wrong link URLs)."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{path}: unknown setting {key!r} (settings are: {known})", key=key)
        kind = str(fields[key].type)
        try:
            if key == "shards" and isinstance(value, dict):  # a [shards] table: name = "url"
                value = [f"{k}={v}" for k, v in value.items()]
            if key == "data_dir":
                value = Path(str(value)).expanduser()
            elif kind.startswith("tuple"):
                if isinstance(value, str) or not isinstance(value, (list, tuple)):
                    raise TypeError("a list")
                value = tuple(str(v) for v in value)
            elif kind.startswith("bool"):
                if not isinstance(value, bool):
                    raise TypeError("true or false")
            elif kind.startswith(("int", "float")):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError("a number")
                value = int(value) if kind.startswith("int") else float(value)
            elif kind.startswith("str") and not isinstance(value, str):
                raise TypeError("a string")
            if key == "shards":
                try:
                    parse_shards(value)
                except ConfigError as e:
                    raise ConfigError(f"{path}: {e.message}", key=key) from None
            if key == "dedup_scope" and value not in DEDUP_SCOPES:
                raise TypeError(" or ".join(repr(v) for v in DEDUP_SCOPES))
        except TypeError as e:
            raise ConfigError(f"{path}: setting {key!r} must be {e}, not {value!r}", key=key) from None
        out[key] = value
    return out
