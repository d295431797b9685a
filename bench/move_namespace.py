"""Benchmark: moving a namespace of N files between two shards while a writer commits to it
(`cubby admin move-namespace`, `cubby.metadata.rebalance`).

Two databases on the machine's PostgreSQL (or MariaDB for the second with ``--b``) stand for
the shards. A namespace of ``--files`` files (one 1 KiB chunk each, committed in batches) is
made on shard a; a writer thread then commits one file at a time through `Rerouting` (as the
server does) while `cubby admin move-namespace` moves it to b in its own process. Printed: the
move's time and the command's CPU,
how long writers paused (the sealing transaction and the new placement), and the writer's
commit latency during the move beside its median before it (the reference, same run), and,
as the copy's reference, one plain read of every row of the namespace.

    python bench/move_namespace.py [--files 20000] [--a URL] [--b URL]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/machine.py
from machine import describe, load_average, summary_line
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from cubby.blockstore.memory import MemoryBlockStore
from cubby.metadata import nscopy
from cubby.metadata.rerouting import Rerouting
from cubby.metadata.schema import drop_all
from cubby.metadata.store import SqlMetadataStore, open_store
from cubby.model import ChunkRef, CommitRequest

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def database(base: str, name: str) -> str:
    url = make_url(base)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if url.get_backend_name() == "postgresql":
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        else:
            conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4"))
    engine.dispose()
    out = url.set(database=name).render_as_string(hide_password=False)
    drop_all(out)
    return out


def fill(store: SqlMetadataStore, user_id: int, ns: int, n: int) -> None:
    blocks = MemoryBlockStore()
    for i in range(0, n, 1000):
        items = [(hashlib.sha256(d).hexdigest(), d) for d in (f"file {j}".encode() * 100 for j in range(i, min(n, i + 1000)))]
        store.ingest_chunks(ns, items, blocks)
        reqs = [
            CommitRequest(f"/d{j % 50}/f{j}.txt", len(d), (ChunkRef(h, len(d)),))
            for j, (h, d) in zip(range(i, min(n, i + 1000)), items, strict=True)
        ]
        out = store.commit_many(user_id, ns, reqs)
        assert all(getattr(r, "committed", False) for r in out), out[:3]


def read_all(store: SqlMetadataStore, shard: str, ns: int) -> float:
    """The reference: one plain read of every row of the namespace, table by table."""
    t0 = time.perf_counter()
    store.router.shard_db(shard).read(
        lambda c: [c.execute(select(t).where(t.c.ns_id == ns)).all() for t in nscopy.NS_TABLES]
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--a", default=PG, help="server of shard a (and the directory)")
    ap.add_argument("--b", default=PG, help="server of shard b")
    args = ap.parse_args()
    info = describe(Path(tempfile.gettempdir()))
    print(summary_line(info))
    a_url, b_url = database(args.a, "cubby_bench_move_a"), database(args.b, "cubby_bench_move_b")
    store = open_store(a_url, shards={"a": a_url, "b": b_url}, place_new="a")
    front = Rerouting(store)
    try:
        user, _ = store.create_user("bench")
        ns = user.root_ns
        fill(store, user.id, ns, args.files)
        reference_read = read_all(store, "a", ns)
        blocks = MemoryBlockStore()
        data = b"x" * 1024
        ref = ChunkRef(hashlib.sha256(data).hexdigest(), len(data))
        store.ingest_chunks(ns, [(ref.hash, data)], blocks)
        latencies: list[tuple[float, float]] = []
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                res = front.commit(user.id, ns, CommitRequest(f"/w/f{i}.txt", len(data), (ref,)))
                assert res.committed
                latencies.append((t0, time.perf_counter() - t0))
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(2.0)
        # The command in its own process, as an administrator runs it (in this one, it would
        # take the writer's share of the GIL).
        cpu0, w0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "cubby", "--json", "admin", "move-namespace", str(ns), "--to", "b",
             "--directory", a_url, "--shard", f"a={a_url}", "--shard", f"b={b_url}"],
            capture_output=True, text=True, check=True,
        )
        wall = time.perf_counter() - w0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        result = json.loads(proc.stdout.splitlines()[-1])
        time.sleep(1.0)
        stop.set()
        t.join()
        before = [d for s, d in latencies if s < w0]
        during = [d for s, d in latencies if w0 <= s <= w0 + wall]
        rows = sum(len(v) for v in nscopy.rows_of(store.router.shard_db("b"), ns).values())
    finally:
        store.close()
    summary = {
        "files": args.files, "rows": rows, "move_seconds": round(wall, 3), "move_cpu_seconds": round(cpu, 3),
        "writers_paused_ms": round(result["paused_seconds"] * 1000, 1),
        "commit_ms_median_before": round(statistics.median(before) * 1000, 2),
        "commit_ms_max_during": round(max(during) * 1000, 1) if during else None,
        "commits_during": len(during), "reference_read_all_seconds": round(reference_read, 3),
    }
    print(
        f"moved {args.files} files ({rows} rows) in {wall:.2f} s ({cpu:.2f} s CPU of the command, "
        f"with its start and the 2 s grace); "
        f"writers paused {summary['writers_paused_ms']} ms; a commit took {summary['commit_ms_median_before']} ms "
        f"(median) before, at most {summary['commit_ms_max_during']} ms during ({len(during)} commits); "
        f"reading every row once took {reference_read:.2f} s"
    )
    info["load_average_end"] = load_average()
    out = Path(__file__).resolve().parent / "results" / "move_namespace.json"
    out.write_text(json.dumps({"benchmark": "move_namespace", "machine": info, **summary}, indent=1) + "\n")
    print(json.dumps(summary))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
