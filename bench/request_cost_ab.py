"""request_cost.py as an A/B pair: the same requests against two trees' servers at once.

On a machine shared with other work the CPU a request costs moves with the load from one
minute to the next, so two runs one after the other compare two loads as much as two trees.
Here a server from each tree (``--base``: another checkout, for instance ``git worktree add
--detach /tmp/base main``; and this one) runs side by side, each on its own database and
cache server, and the requests alternate between them in blocks of ``--block``: both see the
same load. Per kind and cache mode: server CPU per request (utime+stime from /proc), database
transactions per request and cache hit ratio, as request_cost.py measures them.

    .venv/bin/python bench/request_cost_ab.py --base /tmp/base --db postgresql --requests 300
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from machine import describe, load_average, summary_line
from request_cost import KINDS, counters, cpu_seconds, prepare

from tests.helpers.cache_servers import Memcached
from tests.helpers.live_server import LiveServer

CHECKOUT = hashlib.sha1(str(ROOT).encode()).hexdigest()[:6]


def database(engine: str, name: str, folder: Path) -> str:
    if engine == "sqlite":
        return f"sqlite:///{folder / 'meta.db'}"
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from cubby.metadata.schema import drop_all

    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    drop_all(url)
    return url


def pair(
    engine: str, mode: str, trees: dict[str, Path], n: int, block: int, scratch: Path, kinds: tuple[str, ...] = KINDS
) -> dict[str, Any]:
    caches: list[Memcached] = []
    servers: dict[str, LiveServer] = {}
    try:
        for side, tree in trees.items():
            folder = scratch / f"{engine}-{mode}-{side}"
            folder.mkdir(parents=True)
            cache_url = mode
            if mode == "memcached":
                caches.append(Memcached(folder).start())
                cache_url = caches[-1].url
            # Databases of this checkout's own: other checkouts may run this benchmark at the same time.
            url = database(engine, f"cubby_bench_{side}_{CHECKOUT}", folder)
            servers[side] = LiveServer(
                folder / "server", db_url=url, extra_args=["--cache", cache_url], env={"PYTHONPATH": str(tree / "src")}
            ).start()
        clients, ones = {}, {}
        for side, server in servers.items():
            c = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {server.add_user('bench')}"}, timeout=60)
            clients[side], ones[side] = c, prepare(c)[1]
        out: dict[str, Any] = {side: {} for side in servers}
        for kind in kinds:
            for side in servers:
                for _ in range(20):
                    ones[side](kind)
            cpu = dict.fromkeys(servers, 0.0)
            before = {side: counters(clients[side]) for side in servers}
            for _ in range(n // block):
                for side, server in servers.items():
                    pid = server.proc.pid if server.proc else 0
                    c0 = cpu_seconds(pid)
                    for _ in range(block):
                        ones[side](kind)
                    cpu[side] += cpu_seconds(pid) - c0
            for side in servers:
                after = counters(clients[side])
                looked = (after["hit"] - before[side]["hit"]) + (after["miss"] - before[side]["miss"])
                done = n // block * block
                out[side][kind] = {
                    "server_cpu_ms": round(cpu[side] / done * 1000, 3),
                    "db_transactions": round((after["tx"] - before[side]["tx"]) / done, 3),
                    "cache_hit_ratio": round((after["hit"] - before[side]["hit"]) / looked, 3) if looked else None,
                }
        return out
    finally:
        for server in servers.values():
            server.stop()
        for cache in caches:
            cache.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the other tree (the reference)")
    ap.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    ap.add_argument("--modes", default="memory,memcached")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--block", type=int, default=25, help="requests to one server before the other's turn")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"request kinds, of {','.join(KINDS)}")
    ap.add_argument("--name", default="request_cost_ab")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="cubby-request-ab-"))
    info = describe(scratch)
    print(summary_line(info))
    trees = {"base": args.base.resolve(), "after": ROOT}
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        ap.error(f"unknown kinds: {', '.join(sorted(unknown))} (known: {', '.join(KINDS)})")
    results = {m: pair(args.db, m, trees, args.requests, args.block, scratch, kinds) for m in args.modes.split(",")}
    print(f"\nserver CPU ms per request on {args.db}, {args.requests} each, alternating in blocks of {args.block}")
    print(f"{'kind':10} {'cache':10} {'base':>8} {'after':>8} {'after/base':>10} {'DB tx':>11}")
    for kind in kinds:
        for m, r in results.items():
            b, a = r["base"][kind], r["after"][kind]
            ratio = a["server_cpu_ms"] / b["server_cpu_ms"] if b["server_cpu_ms"] else float("nan")
            tx = f"{b['db_transactions']:.2f}/{a['db_transactions']:.2f}"
            print(f"{kind:10} {m:10} {b['server_cpu_ms']:8.3f} {a['server_cpu_ms']:8.3f} {ratio:10.2f} {tx:>11}")
    info["load_average_end"] = load_average()
    out = ROOT / "bench" / "results" / f"{args.name}.json"
    out.write_text(json.dumps({"machine": info, "db": args.db, "requests": args.requests, "block": args.block,
                               "base": str(args.base), "results": results}, indent=1) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
