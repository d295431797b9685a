"""`cubby serve`: run the chosen roles under uvicorn."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cubby.config import Config
from cubby.server import logs
from cubby.server.app import ROLES, build_app
from cubby.server.context import build_context


def parse_roles(role: str | None) -> tuple[str, ...]:
    if role in (None, "", "all"):
        return ROLES
    roles = tuple(r.strip() for r in role.split(",") if r.strip())
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise ValueError(f"unknown role {bad[0]!r}: choose from meta, blocks, notify, all")
    return roles


def serve(config: Config, roles: Sequence[str] = ROLES, *, log_level: str = "info") -> None:
    import uvicorn

    logs.configure(log_level.upper())
    ctx = build_context(config, tuple(roles))
    app = build_app(ctx, roles)
    where = f"http://{config.host}:{config.port}"
    data = f"--db {config.db_url}" if config.db_url else f"--data {config.data_dir}"
    print(
        f"cubby is serving {', '.join(roles)} at {where}\n"
        f"  metadata: {config.db_url or config.data_dir / 'meta.db'}\n"
        f"  add a user:  cubby user add NAME {data}\n"
        f"  then:        export CUBBY_URL={where} CUBBY_TOKEN=<the token it prints>",
        file=sys.stderr,
        flush=True,
    )
    if tuple(roles) == ("notify",) and config.notify_front == "lean":
        from cubby.server.notify import serve_lean

        serve_lean(ctx)
        return
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        limit_concurrency=None,
        # Long-polls wait for minutes: on shutdown, give them a moment, then close them.
        timeout_graceful_shutdown=3,
        # The sans-I/O WebSocket protocol runs no task per connection, and no server pings
        # (no per-connection timers): notification clients ping the server instead.
        ws="websockets-sansio",
        ws_ping_interval=None,
        ws_ping_timeout=None,
        backlog=4096,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cubby.server.run``: the server without the CLI (tests start it this way)."""
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="cubby-server")
    ap.add_argument("--data", type=Path, default=Path("./cubby-data"))
    ap.add_argument("--db", default=None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--role", default="all")
    ap.add_argument("--max-request-bytes", type=int, default=None)
    ap.add_argument("--broker", default="memory")
    ap.add_argument("--notify-front", choices=["lean", "asgi"], default="lean")
    ap.add_argument("--auto-accept-shares", action="store_true")
    ap.add_argument("--blocks", default=None)
    args = ap.parse_args(argv)
    cfg = Config(
        data_dir=args.data, db_url=args.db, host=args.host, port=args.port, broker_url=args.broker,
        notify_front=args.notify_front, auto_accept_shares=args.auto_accept_shares, blocks_url=args.blocks,
    )
    if args.max_request_bytes:
        cfg = cfg.with_(max_request_bytes=args.max_request_bytes)
    serve(cfg, parse_roles(args.role))


if __name__ == "__main__":
    main()
