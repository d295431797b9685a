"""Issue 14: commit throughput and CPU per commit with one metadata shard and with two.

One `cubby serve` process (all roles, in-process cache) on PostgreSQL: first with ``--db``
alone (the directory is the only shard), then with ``--directory`` and two shards on two
databases of the same PostgreSQL server (``near``, which is the directory's database and the
chunk database, and ``far``). ``--users`` users commit empty and one-chunk files from
``--clients`` threads; on two shards the users' roots alternate between the shards, so half
the commits run on a shard that is not the chunk database (touch first, then the shard's
transaction: `cubby.metadata.shardchunks`). The server's CPU per commit is from /proc.

The reference is the one-shard run in the same invocation; the ratio is two-shard commits/s
over one-shard commits/s. Both shards live on one PostgreSQL on the same cores as the server
and the clients, so this measures what sharding *costs* per commit (placement lookups through
the cache, the chunk database's touch), not the capacity a second database server adds.

    .venv/bin/python bench/shards.py --commits 400 --clients 4 --users 4
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from machine import cpu_seconds, describe
from report import Report, Row

from cubby.client.api import ApiClient
from cubby.metadata.schema import drop_all
from cubby.metadata.store import open_store
from cubby.model import ChunkRef
from tests.helpers.live_server import LiveServer


def run_commits(
    url: str, tokens: list[tuple[str, int]], commits: int, clients: int, tag: str, chunked: bool
) -> tuple[float, int]:
    """``commits`` spread over ``clients`` threads, thread k committing as user k mod len(tokens);
    with ``chunked`` every other file has one small chunk (uploaded once per user, then reused)."""
    per = commits // clients
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            token, root_ns = tokens[k % len(tokens)]
            with ApiClient(url, token) as api:
                data = f"bench chunk {k}".encode()
                ref = ChunkRef(hashlib.sha256(data).hexdigest(), len(data))
                for n in range(per):
                    if chunked and n % 2:
                        res = api.commit(f"/{tag}/c{k}/f{n}", len(data), [ref])
                        if not res.committed:
                            api.upload_chunks(root_ns, [(ref.hash, data)])
                            api.commit(f"/{tag}/c{k}/f{n}", len(data), [ref])
                    else:
                        api.commit(f"/{tag}/c{k}/f{n}", 0, [])
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"a commit failed: {errors[0]!r}")
    return seconds, per * clients


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commits", type=int, default=400)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="alternating one-shard / two-shard rounds")
    ap.add_argument("--chunked", action="store_true", help="every other commit names a chunk")
    ap.add_argument("--name", default="shards")
    args = ap.parse_args()
    os.environ.setdefault("PYTEST_XDIST_WORKER", "bench")
    from tests.conftest import POSTGRES_URL, worker_database

    near = worker_database(POSTGRES_URL)
    far = worker_database(POSTGRES_URL, "_far")
    tmp = Path(tempfile.mkdtemp(prefix="cubby-bench-shards-"))
    rep = Report(args.name, describe(tmp), vars(args))
    deployments = {
        "1 shard": ([], {}),
        "2 shards": (["--directory", near, "--shard", f"near={near}", "--shard", f"far={far}"], {"near": near, "far": far}),
    }
    samples: dict[str, list[tuple[float, int, float]]] = {k: [] for k in deployments}
    for rnd in range(args.rounds):
        for label, (flags, shards) in deployments.items():
            for url in (near, far):
                drop_all(url)
            store = open_store(near, shards=shards or None)
            try:
                made = [store.create_user(f"u{i}") for i in range(args.users)]
                tokens = [(token, user.root_ns) for user, token in made]
                placed = sorted(store.router.placement(user.root_ns).shard for user, _ in made)
            finally:
                store.close()
            server = LiveServer(tmp / f"{label.replace(' ', '')}{rnd}" / "data", db_url=near, extra_args=flags).start()
            try:
                assert server.proc is not None
                run_commits(server.url, tokens, 4 * args.clients, args.clients, "warm", args.chunked)
                cpu0 = cpu_seconds(server.proc.pid, children=True)
                seconds, done = run_commits(server.url, tokens, args.commits, args.clients, "run", args.chunked)
                cpu = cpu_seconds(server.proc.pid, children=True) - cpu0
            finally:
                server.stop()
            samples[label].append((seconds, done, cpu))
            print(f"round {rnd} {label}: {done / seconds:.0f} commits/s, {1000 * cpu / done:.2f} ms CPU each; roots on {placed}")
    for label in deployments:
        runs = sorted(samples[label], key=lambda s: s[1] / s[0])
        seconds, done, cpu = runs[len(runs) // 2]
        rep.add(Row(
            "commits", label, seconds, files=done, reference="1 shard" if label == "2 shards" else None,
            extra={
                "server_cpu_ms_per_commit": round(1000 * cpu / done, 3),
                "samples": [{"seconds": round(s, 3), "commits": d, "cpu_s": round(c, 3)} for s, d, c in samples[label]],
            },
        ))
    one, two = rep.find("commits", "1 shard"), rep.find("commits", "2 shards")
    assert one is not None and two is not None
    rep.notes.append(
        f"commits/s {one.files_per_s:.0f} on one shard, {two.files_per_s:.0f} on two (ratio {two.ratio:.2f}); server CPU "
        f"per commit {one.extra['server_cpu_ms_per_commit']} ms vs {two.extra['server_cpu_ms_per_commit']} ms "
        f"(ratio {two.extra['server_cpu_ms_per_commit'] / one.extra['server_cpu_ms_per_commit']:.2f}). Both shards on "
        f"one PostgreSQL on the same {os.cpu_count()} cores as the server and {args.clients} client threads: the cost "
        "of routing, not the capacity of a second database server."
    )
    rep.finish()


if __name__ == "__main__":
    main()
