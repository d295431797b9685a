"""`cubby admin move-namespace` killed (SIGKILL) after each of its steps: recovery leaves the
namespace whole on exactly one shard, the one its placement names (PostgreSQL + PostgreSQL,
PostgreSQL + MariaDB)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cubby.blockstore.memory import MemoryBlockStore
from cubby.metadata import nscopy
from cubby.metadata.rebalance import STEPS, NamespaceMover
from cubby.metadata.rerouting import Rerouting
from cubby.metadata.store import open_store
from tests.helpers.live_server import LiveServer
from tests.metadata.conftest import put_file

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def sharded(a_url: str, b_url: str):
    return open_store(a_url, shards={"a": a_url, "b": b_url}, place_new="a")


def where(store, ns: int) -> list[str]:
    return [name for name, db in sorted(store.router.shards.items()) if nscopy.holds(db, ns)]


def killed_move(a_url: str, b_url: str, step: str) -> tuple[int, int, dict]:
    """A namespace of a few files on shard a, and a move of it to b killed after ``step``:
    (user id, namespace, its rows before)."""
    store = sharded(a_url, b_url)
    blocks = MemoryBlockStore()
    try:
        alice, _ = store.create_user("alice")
        ns = alice.root_ns
        for i in range(12):
            put_file(store, blocks, alice.id, ns, f"/d{i % 3}/f{i}.txt")
        store.move(alice.id, ns, "/d1", "/moved")
        original = nscopy.rows_of(store.router.shard_db("a"), ns)
    finally:
        store.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, str(HERE / "move_crasher.py"), a_url, b_url, step, str(ns)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    return alice.id, ns, original


@pytest.mark.parametrize("step", STEPS)
def test_a_namespace_move_killed_after_each_step_leaves_it_whole_on_one_shard(two_urls, step):
    a_url, b_url = two_urls
    _uid, ns, original = killed_move(a_url, b_url, step)

    fresh = sharded(a_url, b_url)
    try:
        mover = NamespaceMover(fresh.router, grace=0)
        mover.recover()
        assert mover.recover() == 0  # nothing left, and running it again changes nothing
        p = fresh.router.placement(ns)
        forward = STEPS.index(step) >= STEPS.index("sealed")
        assert (p.shard, p.state) == ("b" if forward else "a", "live")
        assert where(fresh, ns) == [p.shard]
        assert nscopy.rows_of(fresh.router.shard_db(p.shard), ns) == original
        # Whole where it is: it moves again (back, or on to the other shard).
        back = "a" if p.shard == "b" else "b"
        mover.move(ns, back)
        assert where(fresh, ns) == [back]
        assert nscopy.rows_of(fresh.router.shard_db(back), ns) == original
    finally:
        fresh.close()


def test_a_writer_finishes_a_move_whose_mover_died_after_sealing(two_urls):
    """Nobody runs recovery: the writer that keeps finding the namespace sealed does, after a
    second, and its write lands on the new shard."""
    a_url, b_url = two_urls
    uid, ns, _original = killed_move(a_url, b_url, "sealed")
    fresh = sharded(a_url, b_url)
    try:
        entry = Rerouting(fresh).mkdir(uid, ns, "/after the move")
        assert fresh.router.placement(ns).shard == "b"
        assert where(fresh, ns) == ["b"]
        assert fresh.stat(ns, "/after the move").rev == entry.rev == fresh.head(ns)
    finally:
        fresh.close()


def test_a_server_start_recovers_an_interrupted_move(two_urls, tmp_path):
    """A move killed after its bulk copy is undone by the next server to start."""
    a_url, b_url = two_urls
    _uid, ns, original = killed_move(a_url, b_url, "copied")
    server = LiveServer(tmp_path / "data", db_url=a_url, extra_args=["--shard", f"a={a_url}", "--shard", f"b={b_url}"])
    with server:
        pass  # started (healthy) and stopped: recovery ran before it served
    fresh = sharded(a_url, b_url)
    try:
        p = fresh.router.placement(ns)
        assert (p.shard, p.state) == ("a", "live")
        assert where(fresh, ns) == ["a"]
        assert nscopy.rows_of(fresh.router.shard_db("a"), ns) == original
    finally:
        fresh.close()
