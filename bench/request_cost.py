"""Issue 13 (item 5): what one request costs the server, without and with the metadata cache.

A real server (`cubby serve`, the process the tests start) on PostgreSQL or SQLite, driven
over loopback HTTP by one client. For each request kind (stat of a file, a listing of 100
entries, a single-file commit of one 4 KiB chunk that the user already holds), N requests in
a row after a warm-up; server CPU is the server process's utime+stime from /proc/PID/stat
around them, database transactions come from its ``/metrics`` (``cubby_db_transactions_total``)
and cache hits and misses from ``cubby_cache_requests_total``. The reference is the same
server with ``--cache none``, measured in the same run: ratio = reference CPU / CPU (above 1:
cheaper with the cache).

    .venv/bin/python bench/request_cost.py --requests 300 --db postgresql
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from machine import describe, load_average, summary_line

from cubby.core import frames
from tests.helpers.cache_servers import Memcached
from tests.helpers.live_server import LiveServer

KINDS = ("stat", "list-100", "commit")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counters(client: httpx.Client) -> dict[str, float]:
    """Transactions and cache lookups so far, from the server's /metrics."""
    out = {"tx": 0.0, "hit": 0.0, "miss": 0.0}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("cubby_db_transactions_total"):
            out["tx"] += float(line.split()[-1])
        elif line.startswith("cubby_cache_requests_total"):
            out["hit" if 'result="hit"' in line else "miss"] += float(line.split()[-1])
    return out


def fresh_db(engine: str, scratch: Path) -> str:
    if engine == "sqlite":
        return f"sqlite:///{scratch / 'meta.db'}"
    from cubby.metadata.schema import drop_all

    url = os.environ.get("CUBBY_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/cubby_bench")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = 'cubby_bench'")).first():
            conn.execute(text('CREATE DATABASE "cubby_bench"'))
    admin.dispose()
    drop_all(url)
    return url


def measure(mode: str, engine: str, n: int, scratch: Path) -> dict[str, Any]:
    folder = scratch / mode
    folder.mkdir(parents=True, exist_ok=True)
    cache = Memcached(folder).start() if mode == "memcached" else None
    try:
        url = fresh_db(engine, folder)
        server = LiveServer(folder / "server", db_url=url, extra_args=["--cache", cache.url if cache else mode]).start()
        try:
            return run_kinds(server, n)
        finally:
            server.stop()
    finally:
        if cache is not None:
            cache.stop()


def prepare(c: httpx.Client) -> tuple[list[dict[str, Any]], Callable[[str], None]]:
    """Give the user of ``c`` one stored 4 KiB chunk and a folder /d of 100 files made of it;
    return the chunk (as a commit names it) and a function that sends one request of a kind."""
    root_ns = c.get("/api/v1/account").json()["root_ns"]
    data = os.urandom(4096)
    digest = hashlib.sha256(data).hexdigest()
    c.post(f"/api/v1/blocks/upload?ns_id={root_ns}", content=b"".join(frames.encode_many([(digest, data)])),
           headers={"content-type": frames.CONTENT_TYPE}).raise_for_status()
    chunk = [{"hash": digest, "size": len(data)}]
    c.post("/api/v1/files/mkdir", json={"path": "/d"}).raise_for_status()
    c.post("/api/v1/files/commit_batch", json={"commits": [
        {"path": f"/d/f{i:03}", "size": len(data), "chunks": chunk} for i in range(100)
    ]}).raise_for_status()
    count = {"i": 0}

    def one(kind: str) -> None:
        if kind == "stat":
            r = c.get("/api/v1/files/stat", params={"path": "/d/f042"})
        elif kind == "list-100":
            r = c.get("/api/v1/files/list", params={"path": "/d"})
            assert len(r.json()["entries"]) == 100
        else:
            count["i"] += 1
            r = c.post("/api/v1/files/commit", json={"path": f"/c/{count['i']}", "size": len(data), "chunks": chunk})
            assert r.json()["status"] == "committed", r.text
        r.raise_for_status()

    return chunk, one


def run_kinds(server: LiveServer, n: int) -> dict[str, Any]:
    token = server.add_user("bench")
    h = {"authorization": f"Bearer {token}"}
    c = httpx.Client(base_url=server.url, headers=h, timeout=60)
    _, one = prepare(c)

    pid = server.proc.pid if server.proc else 0
    out: dict[str, Any] = {}
    for kind in KINDS:
        for _ in range(20):
            one(kind)  # warm: connections, caches, the first mkdir of /c
        before, cpu0, t0 = counters(c), cpu_seconds(pid), time.perf_counter()
        for _ in range(n):
            one(kind)
        cpu, wall, after = cpu_seconds(pid) - cpu0, time.perf_counter() - t0, counters(c)
        looked = (after["hit"] - before["hit"]) + (after["miss"] - before["miss"])
        out[kind] = {
            "server_cpu_ms": round(cpu / n * 1000, 3),
            "wall_ms": round(wall / n * 1000, 3),
            # one /metrics read between the snapshots is not a transaction: nothing to subtract
            "db_transactions": round((after["tx"] - before["tx"]) / n, 3),
            "cache_hit_ratio": round((after["hit"] - before["hit"]) / looked, 3) if looked else None,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="requests of each kind per mode")
    ap.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    ap.add_argument("--modes", default="none,memory,memcached", help="cache modes; the first is the reference")
    ap.add_argument("--name", default="request_cost")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="cubby-request-cost-"))
    info = describe(scratch)
    print(summary_line(info))
    modes = args.modes.split(",")
    results = {m: measure(m, args.db, args.requests, scratch) for m in modes}
    ref = results[modes[0]]
    print(f"\nserver cost per request on {args.db}, {args.requests} requests each (reference: --cache {modes[0]})")
    print(f"{'kind':10} {'cache':10} {'CPU ms':>8} {'ratio':>6} {'wall ms':>8} {'DB tx':>6} {'hits':>6}")
    for kind in KINDS:
        for m in modes:
            r = results[m][kind]
            ratio = ref[kind]["server_cpu_ms"] / r["server_cpu_ms"] if r["server_cpu_ms"] else float("inf")
            hits = "-" if r["cache_hit_ratio"] is None else f"{r['cache_hit_ratio']:.2f}"
            print(f"{kind:10} {m:10} {r['server_cpu_ms']:8.3f} {ratio:6.2f} {r['wall_ms']:8.3f} {r['db_transactions']:6.2f} {hits:>6}")
    info["load_average_end"] = load_average()
    out = ROOT / "bench" / "results" / f"{args.name}.json"
    out.write_text(json.dumps({"machine": info, "db": args.db, "requests": args.requests, "results": results}, indent=1) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
