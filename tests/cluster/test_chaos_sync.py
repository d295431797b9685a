"""The randomized multi-client sync test (`tests/sync/test_random.py`'s driver) through
haproxy in front of two processes of each role, while a random cubby process is killed with
SIGKILL every few seconds and started again: all clients converge and no version a client
wrote is lost."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from tests.helpers.cluster import Cluster
from tests.sync.conftest import Clients
from tests.sync.test_random import Driver

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]


class Killer:
    """Kills a random process with SIGKILL every 1.5–3 s and starts it again at once (on the
    same port, as a supervisor would); one at a time, so each role keeps a live process."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.stop = threading.Event()
        self.kills: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True, name="killer")

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(1.5, 3.0)):
            role = self.rng.choice(["meta", "blocks", "notify"])
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


def test_clients_converge_through_haproxy_while_processes_die(cluster: Cluster, tmp_path: Path) -> None:
    rng = random.Random(13)
    clients = Clients(cluster, tmp_path, "chaos")  # type: ignore[arg-type]  # a Cluster has url and add_user
    d = Driver(clients, rng, tmp_path / "clients")
    try:
        with Killer(cluster, random.Random(7)) as killer:
            for _step in range(60):
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
    finally:
        d.close()
        clients.close()
