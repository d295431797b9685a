"""The randomized multi-client sync test (`tests/sync/test_random.py`'s driver) through
haproxy in front of two processes of each role sharing one metadata cache server (Redis or
memcached: `tests/cluster/conftest.py`), while a random cubby process, or now and then the
cache server, is killed with SIGKILL every few seconds and started again: all clients
converge, no version a client wrote is lost, and what the server lists at the end (read
through the cache) is what the clients hold."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import httpx
import pytest

from tests.helpers.cache_servers import CacheServer
from tests.helpers.cluster import Cluster
from tests.sync.conftest import Clients
from tests.sync.test_random import Driver

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]


class Killer:
    """Kills a random process with SIGKILL every 1.5–3 s and starts it again at once (on the
    same port, as a supervisor would); one at a time, so each role keeps a live process. One
    kill in seven is the cache server's (it comes back empty)."""

    def __init__(self, cluster: Cluster, cache: CacheServer, rng: random.Random) -> None:
        self.cluster = cluster
        self.cache = cache
        self.rng = rng
        self.stop = threading.Event()
        self.kills: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True, name="killer")

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(1.5, 3.0)):
            role = self.rng.choices(["meta", "blocks", "notify", "cache"], weights=[2, 2, 2, 1])[0]
            if role == "cache":
                self.cache.stop()
                self.kills.append(f"cache:{self.cache.kind}")
                self.cache.start()
                continue
            victim = self.rng.choice(self.cluster.servers[role])
            victim.stop(kill=True)
            self.kills.append(f"{role}:{victim.port}")
            victim.start()

    def __enter__(self) -> Killer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def cache_hits(cluster: Cluster) -> float:
    """Cache hits counted by the live meta and blocks processes since they last started."""
    total = 0.0
    for server in cluster.servers["meta"] + cluster.servers["blocks"]:
        for line in httpx.get(server.url + "/metrics", timeout=30).text.splitlines():
            if line.startswith("cubby_cache_requests_total") and 'result="hit"' in line:
                total += float(line.split()[-1])
    return total


def test_clients_converge_through_haproxy_while_processes_die(
    cluster: Cluster, cluster_cache: CacheServer, tmp_path: Path
) -> None:
    rng = random.Random(13)
    clients = Clients(cluster, tmp_path, "chaos")  # type: ignore[arg-type]  # a Cluster has url and add_user
    d = Driver(clients, rng, tmp_path / "clients")
    d.log.append(f"cache {cluster_cache.kind}")
    try:
        with Killer(cluster, cluster_cache, random.Random(7)) as killer:
            step = 0
            # At least 60 steps, and on until three processes were killed meanwhile: on a slow
            # machine a restart takes longer, and the steps must still run through kills.
            while step < 60 or (len(killer.kills) < 3 and step < 400):
                step += 1
                r = rng.random()
                i = rng.randrange(3)
                if r < 0.5:
                    d.local_op(i)
                elif r < 0.8:
                    d.sync_in_process(i, crash_p=0.1)
                elif r < 0.95:
                    d.sync_concurrently()
                else:
                    d.sync_killed(i)
        assert len(killer.kills) >= 3, killer.kills
        d.log.append(f"killed {killer.kills}")
        d.settle()
        d.check(clients.api)
        assert cache_hits(cluster) > 0, "the processes never read from the cache"
    finally:
        d.close()
        clients.close()
