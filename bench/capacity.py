"""Issue 14: a capacity model for a million users and a petabyte, from cubby's own costs.

Measured in this run, on PostgreSQL, through a real `cubby serve` (the process the tests
start) with its in-process metadata cache, over loopback HTTP:

- server CPU per request (a single-file commit, a stat, a listing of 100 entries), from the
  server's /proc/PID/stat, as `bench/request_cost.py` measures it;
- PostgreSQL CPU per request: the CPU of the database backends serving this server's
  connections (found in ``pg_stat_activity`` by database name, read from /proc), the figure
  that says how many commits one shard database can take;
- metadata bytes per file: the growth of the database (``pg_database_size``) over ``--files``
  committed files, each a file row, a revision, a journal entry and a chunk reference.

Taken from another benchmark's result file (its date is printed): the memory of one push
connection (`results/notify_capacity_ws_lean.json` of `notify_capacity.py`, lean WebSocket
front, the largest step).

The reference in the same run is the database's share: PostgreSQL CPU / cubby server CPU per
commit says whether the shards or the metadata processes run out first.

The workload is a stated model, not a measurement; every figure of it is a flag. The defaults:
1,000,000 users holding 1 PB (1 GB each, 3,000 files of 330 KB), 1.5 devices each with a push
connection open, 50 commits per user per day arriving at 3x the daily mean at peak, and 5 reads
(stat, list, journal) per commit (the other devices and the web app following the change).

    .venv/bin/python bench/capacity.py [--files 2000] [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from machine import describe, load_average, summary_line
from request_cost import cpu_seconds, prepare

from tests.helpers.live_server import LiveServer

DB_NAME = "cubby_capacity"
PACK_BYTES = 16 * 1024 * 1024


def fresh_db() -> str:
    """An empty database of its own on the machine's PostgreSQL (dropped and made again)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = os.environ.get("CUBBY_BENCH_POSTGRES", f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}")
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
    admin.dispose()
    return url


class Postgres:
    """What the database spends: its backends' CPU for this database, and its size."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self.engine = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")

    def _scalar(self, sql: str) -> Any:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return conn.execute(text(sql), {"db": DB_NAME}).scalar()

    def backends_cpu(self) -> dict[int, float]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            pids = [r[0] for r in conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :db"), {"db": DB_NAME})]
        out = {}
        for pid in pids:
            try:
                out[pid] = cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                pass  # a backend that ended between the query and the read
        return out

    def size(self) -> int:
        return int(self._scalar("SELECT pg_database_size(:db)"))

    def close(self) -> None:
        self.engine.dispose()


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU the backends spent between two snapshots (a backend that is new counts whole)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def measure(server: LiveServer, pg: Postgres, files: int, n: int) -> dict[str, Any]:
    token = server.add_user("capacity")
    c = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=120)
    chunk, one = prepare(c)
    size = chunk[0]["size"]
    c.post("/api/v1/files/mkdir", json={"path": "/bulk"}).raise_for_status()

    # Bytes per file: one row per file, revision, journal entry and chunk reference, with indexes.
    time.sleep(1)  # let autovacuum and the stats settle before the first size
    size0 = pg.size()
    for start in range(0, files, 500):
        batch = [{"path": f"/bulk/f{i:06}", "size": size, "chunks": chunk} for i in range(start, min(files, start + 500))]
        c.post("/api/v1/files/commit_batch", json={"commits": batch}).raise_for_status()
    bytes_per_file = (pg.size() - size0) / files

    pid = server.proc.pid if server.proc else 0
    out: dict[str, Any] = {"bytes_per_file": round(bytes_per_file, 1)}
    for kind in ("commit", "stat", "list-100"):
        for _ in range(20):
            one(kind)
        cpu0, db0, t0 = cpu_seconds(pid), pg.backends_cpu(), time.perf_counter()
        for _ in range(n):
            one(kind)
        cpu, db, wall = cpu_seconds(pid) - cpu0, spent(db0, pg.backends_cpu()), time.perf_counter() - t0
        out[kind] = {
            "server_cpu_ms": round(cpu / n * 1000, 3),
            "db_cpu_ms": round(db / n * 1000, 3),
            "wall_ms": round(wall / n * 1000, 3),
        }
    return out


def result_file(name: str) -> tuple[Path, dict[str, Any]] | None:
    path = ROOT / "bench" / "results" / name
    return (path, json.loads(path.read_text())) if path.exists() else None


def model(costs: dict[str, Any], conn_bytes: float, a: argparse.Namespace) -> dict[str, Any]:
    """Processes and databases for the workload, from the per-request costs."""
    peak_commits = a.users * a.commits_per_day / 86400 * a.peak
    peak_reads = peak_commits * a.reads_per_commit
    read_cpu = (costs["stat"]["server_cpu_ms"] + costs["list-100"]["server_cpu_ms"]) / 2
    read_db = (costs["stat"]["db_cpu_ms"] + costs["list-100"]["db_cpu_ms"]) / 2
    meta_cores = (peak_commits * costs["commit"]["server_cpu_ms"] + peak_reads * read_cpu) / 1000
    db_cores = (peak_commits * costs["commit"]["db_cpu_ms"] + peak_reads * read_db) / 1000
    files = a.users * a.bytes_per_user / a.file_bytes
    meta_bytes = files * costs["bytes_per_file"] * a.history
    by_size = meta_bytes / a.shard_bytes
    by_cpu = db_cores / (a.shard_cores * a.utilisation)
    connections = a.users * a.devices
    notify_per_process = a.notify_memory / conn_bytes
    packs = a.users * a.bytes_per_user / PACK_BYTES
    cache_bytes = a.users * a.active_share * (a.cache_files_per_active_user * 400 + 2000)
    return {
        "peak_commits_per_s": round(peak_commits),
        "peak_reads_per_s": round(peak_reads),
        "meta_cores": round(meta_cores, 1),
        "meta_processes": math.ceil(meta_cores / a.utilisation),
        "db_cores": round(db_cores, 1),
        "files": int(files),
        "metadata_bytes": int(meta_bytes),
        "shards_by_size": round(by_size, 1),
        "shards_by_cpu": round(by_cpu, 1),
        "shards": max(1, math.ceil(max(by_size, by_cpu))),
        "connections": int(connections),
        "notify_processes": max(1, math.ceil(connections / notify_per_process)),
        "packs": int(packs),
        "cache_bytes": int(cache_bytes),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2000, help="files committed to measure metadata bytes per file")
    ap.add_argument("--requests", type=int, default=300, help="requests of each kind measured")
    ap.add_argument("--users", type=float, default=1e6)
    ap.add_argument("--bytes-per-user", type=float, default=1e9, help="1 PB over a million users")
    ap.add_argument("--file-bytes", type=float, default=330e3, help="mean file size")
    ap.add_argument("--history", type=float, default=1.5, help="metadata kept per live file (old revisions, journal)")
    ap.add_argument("--devices", type=float, default=1.5, help="push connections per user")
    ap.add_argument("--commits-per-day", type=float, default=50)
    ap.add_argument("--peak", type=float, default=3.0, help="peak over daily mean")
    ap.add_argument("--reads-per-commit", type=float, default=5.0)
    ap.add_argument("--active-share", type=float, default=0.2, help="users active in the cache's lifetime")
    ap.add_argument("--cache-files-per-active-user", type=float, default=300)
    ap.add_argument("--shard-bytes", type=float, default=1e12, help="metadata one shard database holds")
    ap.add_argument("--shard-cores", type=float, default=16, help="cores of one shard database server")
    ap.add_argument("--utilisation", type=float, default=0.5, help="target busy share of a core at peak")
    ap.add_argument("--notify-memory", type=float, default=2 * 2**30, help="memory of one notify process")
    ap.add_argument("--name", default="capacity")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="cubby-capacity-"))
    info = describe(scratch)
    print(summary_line(info))
    url = fresh_db()
    pg = Postgres(url)
    server = LiveServer(scratch / "server", db_url=url, extra_args=["--cache", "memory"]).start()
    try:
        costs = measure(server, pg, args.files, args.requests)
    finally:
        server.stop()
        pg.close()
    notify = result_file("notify_capacity_ws_lean.json")
    conn_bytes = float(notify[1]["steps"][-1]["bytes_per_connection"]) if notify else 4096.0
    result = model(costs, conn_bytes, args)

    print(f"\nmeasured on PostgreSQL, {args.requests} requests each, in-process cache:")
    print(f"{'kind':10} {'cubby CPU ms':>13} {'PostgreSQL CPU ms':>18} {'db / cubby':>11}")
    for kind in ("commit", "stat", "list-100"):
        r = costs[kind]
        ratio = r["db_cpu_ms"] / r["server_cpu_ms"] if r["server_cpu_ms"] else 0.0
        print(f"{kind:10} {r['server_cpu_ms']:13.3f} {r['db_cpu_ms']:18.3f} {ratio:11.2f}")
    print(f"metadata bytes per file: {costs['bytes_per_file']:.0f}")
    src = f"{notify[0].name}" if notify else "a default of 4 KiB"
    print(f"push connection: {conn_bytes:.0f} bytes, from {src}")
    print(f"\nmodel: {args.users:.0f} users, {args.users * args.bytes_per_user / 1e15:.2f} PB")
    for k, v in result.items():
        print(f"  {k:24} {v:,}" if isinstance(v, int) else f"  {k:24} {v}")
    info["load_average_end"] = load_average()
    out = ROOT / "bench" / "results" / f"{args.name}.json"
    out.write_text(json.dumps({
        "machine": info, "costs": costs, "push_connection_bytes": conn_bytes,
        "workload": {k: v for k, v in vars(args).items() if k not in ("name",)}, "model": result,
    }, indent=1) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
