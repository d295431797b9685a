"""`cubby serve`: run the chosen roles under uvicorn (the command line is `cubby.cli.serve`)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence

from cubby.config import Config
from cubby.core.urls import masked
from cubby.notify.protocol import MAX_BODY
from cubby.server import guard, logs
from cubby.server.app import ROLES, build_app
from cubby.server.context import build_context
from cubby.server.gate import ConnectionGate, ConnectionLimits
from cubby.server.peers import TrustedProxies


def parse_roles(role: str | None) -> tuple[str, ...]:
    if role in (None, "", "all"):
        return ROLES
    roles = tuple(r.strip() for r in role.split(",") if r.strip())
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise ValueError(f"unknown role {bad[0]!r}: choose from meta, blocks, notify, all")
    return roles


def listening_address(config: Config) -> str:
    """``host:port`` that clients should use, read from the inherited socket when there is one."""
    if config.listen_fd is None:
        return f"{config.host}:{config.port}"
    with socket.socket(fileno=os.dup(config.listen_fd)) as sock:
        host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def banner(config: Config, roles: Sequence[str]) -> str:
    """Where the server listens and how to add a user, for the person who started it. A
    database URL's password is masked (`cubby.core.urls.masked`): this goes to a terminal, and
    under a service manager to its journal, where no secret belongs."""
    where = f"http://{listening_address(config)}"
    db = masked(config.db_url) if config.db_url else None
    return (
        f"cubby is serving {', '.join(roles)} at {where}\n"
        f"  metadata: {db or config.data_dir / 'meta.db'}\n"
        f"  add a user:  cubby user add NAME {f'--db {db}' if db else f'--data {config.data_dir}'}\n"
        f"  then:        export CUBBY_URL={where} CUBBY_TOKEN=<the token it prints>"
    )


def serve(
    config: Config, roles: Sequence[str] = ROLES, *, log_level: str = "info", workers: int = 1, announce: bool = True
) -> None:
    """Run the server until it is stopped; ``announce``: print `banner` first (a worker of
    ``--workers`` does not: its parent prints it once)."""
    if workers > 1:  # a parent that runs `workers` copies of this function (cubby.server.workers)
        from cubby.server.workers import serve_workers

        serve_workers(config, roles, workers, log_level=log_level)
        return
    import uvicorn

    from cubby.core.gcpolicy import tune_collector
    from cubby.core.malloc import tune_for_chunks

    tune_for_chunks()  # each worker process: chunk buffers without page faults (cubby.core.malloc)
    logs.configure(log_level.upper())
    ctx = build_context(config, tuple(roles))
    app = build_app(ctx, roles)
    tune_collector()  # after the app is built: what start made is frozen (cubby.core.gcpolicy)
    if announce:
        print(banner(config, roles), file=sys.stderr, flush=True)
    gate = ConnectionGate(ConnectionLimits.from_config(config), TrustedProxies.parse(config.trusted_proxies))
    if tuple(roles) == ("notify",) and config.notify_front == "lean":
        from cubby.server.notify import serve_lean

        serve_lean(ctx, gate)
        return
    http, ws = guard.protocols(gate)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        fd=config.listen_fd,
        log_level="warning",
        log_config=None,  # keep the JSON, token-redacting handlers of logs.configure
        access_log=False,
        # uvicorn would believe X-Forwarded-For/-Proto from 127.0.0.1 by default; only the
        # operator's --trusted-proxy decides that (`cubby.server.peers`).
        proxy_headers=False,
        # Deadlines, connection caps and buffer caps: `cubby.server.guard`.
        http=http,
        ws=ws,
        ws_max_size=MAX_BODY,
        timeout_keep_alive=max(1, int(config.idle_timeout)),
        limit_concurrency=None,
        # Long-polls wait for minutes: on shutdown, give them a moment, then close them.
        timeout_graceful_shutdown=3,
        # `ws` is uvicorn's sans-I/O WebSocket protocol (no task per connection), guarded; no
        # server pings (no per-connection timers): notification clients ping the server instead.
        ws_ping_interval=None,
        ws_ping_timeout=None,
        backlog=4096,
    )
