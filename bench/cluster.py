"""Issue 13: a deployment of several processes behind haproxy.

1. Commits per second through haproxy with one meta process, then with two (one blocks and
   one notify process each time; PostgreSQL, Redis broker): ``--clients`` threads each commit
   empty files as fast as they can. The ratio is two-meta over one-meta throughput, and the
   server CPU per commit is the meta processes' CPU time (user + system, from /proc) over the
   commits. On a 2-core machine shared with the client threads, haproxy, PostgreSQL and other
   people's work, a second process may add cost rather than capacity: the figure says which.
2. Save-to-appear through the load balancer: one client commits, another's long-poll (on a
   notify process) wakes; the time from the commit's start to the wake-up, median of
   ``--samples``. Reference: the same on one all-in-one server on the same database.

    .venv/bin/python bench/cluster.py --commits 300 --clients 4 --samples 10
"""

from __future__ import annotations

import argparse
import os
import statistics
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
from cubby.client.notify import PushWaiter
from cubby.metadata.schema import drop_all
from tests.helpers.cluster import Cluster
from tests.helpers.live_server import LiveServer


def commits_per_second(url: str, token: str, commits: int, clients: int, tag: str) -> float:
    per = commits // clients
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            with ApiClient(url, token) as api:
                for n in range(per):
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
    return seconds


def save_to_appear(url: str, token: str, samples: int, tag: str) -> list[float]:
    """Seconds from a commit's start until another client's long-poll wakes, ``samples`` times."""
    out: list[float] = []
    with ApiClient(url, token) as writer, ApiClient(url, token) as reader:
        waiter = PushWaiter(reader, long_timeout=60)
        try:
            for n in range(samples):
                cursor = {int(ns["ns_id"]): int(ns["head"]) for ns in reader.account()["namespaces"]}
                woke = threading.Event()
                thread = threading.Thread(target=lambda c=cursor, w=woke: waiter.wait(c, 60) and w.set())
                thread.start()
                time.sleep(0.3)  # the long-poll is registered
                t0 = time.perf_counter()
                writer.commit(f"/{tag}/appear{n}", 0, [])
                woke.wait(30)
                out.append(time.perf_counter() - t0)
                thread.join(timeout=30)
                if not woke.is_set() or not waiter.pushing:
                    raise SystemExit("the long-poll did not wake by push")
        finally:
            waiter.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commits", type=int, default=300)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--name", default="cluster")
    args = ap.parse_args()
    os.environ.setdefault("PYTEST_XDIST_WORKER", "bench")
    from tests.conftest import POSTGRES_URL, worker_database

    db_url = worker_database(POSTGRES_URL)
    tmp = Path(tempfile.mkdtemp(prefix="cubby-bench-cluster-"))
    rep = Report(args.name, describe(tmp), vars(args))
    appear: dict[str, list[float]] = {}
    for metas in (1, 2):
        drop_all(db_url)
        with Cluster(tmp / f"m{metas}", db_url, meta=metas, blocks=1, notify=1) as cluster:
            token = cluster.add_user("bench")
            commits_per_second(cluster.url, token, 2 * args.clients, args.clients, "warm")
            pids = [s.proc.pid for s in cluster.servers["meta"] if s.proc is not None]
            cpu0 = sum(cpu_seconds(p, children=True) for p in pids)
            seconds = commits_per_second(cluster.url, token, args.commits, args.clients, "run")
            cpu = sum(cpu_seconds(p, children=True) for p in pids) - cpu0
            done = args.commits // args.clients * args.clients
            rep.add(Row(
                "commits", f"{metas} meta via haproxy", seconds, files=done,
                reference="1 meta via haproxy" if metas == 2 else None,
                extra={"server_cpu_ms_per_commit": round(1000 * cpu / done, 2)},
            ))
            if metas == 2:
                appear["haproxy, 2 meta + blocks + notify"] = save_to_appear(cluster.url, token, args.samples, "a")
    drop_all(db_url)
    server = LiveServer(tmp / "single" / "data", db_url=db_url).start()
    try:
        appear["all-in-one"] = save_to_appear(server.url, server.add_user("bench"), args.samples, "a")
    finally:
        server.stop()
    ref = statistics.median(appear["all-in-one"])
    rep.add(Row("save_to_appear", "all-in-one", ref, extra={"samples_seconds": [round(s, 4) for s in appear["all-in-one"]]}))
    name = "haproxy, 2 meta + blocks + notify"
    rep.add(Row("save_to_appear", name, statistics.median(appear[name]), reference="all-in-one",
                extra={"samples_seconds": [round(s, 4) for s in appear[name]]}))
    one, two = rep.find("commits", "1 meta via haproxy"), rep.find("commits", "2 meta via haproxy")
    assert one is not None and two is not None
    rep.notes.append(
        f"commits/s: {one.files_per_s:.0f} with one meta process, {two.files_per_s:.0f} with two (ratio {two.ratio:.2f}); "
        f"meta CPU per commit {one.extra['server_cpu_ms_per_commit']} ms vs {two.extra['server_cpu_ms_per_commit']} ms. "
        f"{os.cpu_count()} cores shared by the {args.clients} client threads, haproxy, PostgreSQL and the servers."
    )
    rep.notes.append("save_to_appear ratio = all-in-one median / load-balanced median (below 1: slower behind haproxy)")
    rep.print()
    print(f"wrote {rep.write()}")


if __name__ == "__main__":
    main()
