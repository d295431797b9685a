"""`cubby admin move-namespace` killed (SIGKILL) after each of its steps: recovery leaves the
namespace whole on exactly one shard, the one its placement names (PostgreSQL + PostgreSQL,
PostgreSQL + MariaDB)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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


def killed_moves(a_url: str, b_url: str, steps: tuple[str, ...]) -> dict[str, tuple[int, int, dict, list]]:
    """For each of ``steps``, a namespace of a few files on shard a and a move of it to b
    killed after that step (the moves run at once, each in its own process): step -> (user
    id, namespace, its rows before, its listing before)."""
    store = sharded(a_url, b_url)
    blocks = MemoryBlockStore()
    made = {}
    try:
        for step in steps:
            user, _ = store.create_user(f"u-{step}")
            ns = user.root_ns
            for i in range(12):
                put_file(store, blocks, user.id, ns, f"/d{i % 3}/f{i}.txt")
            store.move(user.id, ns, "/d1", "/moved")
            listing = sorted((e.path, e.rev) for e in store.list(ns, "/", recursive=True).entries)
            made[step] = (user.id, ns, nscopy.rows_of(store.router.shard_db("a"), ns), listing)
    finally:
        store.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    procs = {
        step: subprocess.Popen(
            [sys.executable, str(HERE / "move_crasher.py"), a_url, b_url, step, str(made[step][1])],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for step in steps
    }
    for step, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, f"{step}: {out}"
    return made


def test_a_namespace_move_killed_after_each_step_leaves_it_whole_on_one_shard(two_urls):
    a_url, b_url = two_urls
    made = killed_moves(a_url, b_url, STEPS)
    fresh = sharded(a_url, b_url)
    try:
        mover = NamespaceMover(fresh.router, grace=0)
        assert mover.recover() == len(STEPS) - 1  # every move but the finished one ("deleted")
        assert mover.recover() == 0  # nothing left, and running it again changes nothing
        for step, (_uid, ns, original, listing) in made.items():
            p = fresh.router.placement(ns)
            forward = STEPS.index(step) >= STEPS.index("sealed")
            assert (p.shard, p.state) == ("b" if forward else "a", "live"), step
            assert where(fresh, ns) == [p.shard], step
            assert nscopy.rows_of(fresh.router.shard_db(p.shard), ns) == original, step
            # Readable through the store, its journal whole.
            assert sorted((e.path, e.rev) for e in fresh.list(ns, "/", recursive=True).entries) == listing, step
            assert [e.jid for e in fresh.journal(ns, 0)] == list(range(1, fresh.head(ns) + 1)), step
            # Whole where it is: it moves again (back, or on to the other shard).
            back = "a" if p.shard == "b" else "b"
            mover.move(ns, back)
            assert where(fresh, ns) == [back], step
            assert nscopy.rows_of(fresh.router.shard_db(back), ns) == original, step
    finally:
        fresh.close()


def test_a_writer_finishes_a_move_whose_mover_died_after_sealing(two_urls):
    """Nobody runs recovery: the writer that keeps finding the namespace sealed does, after a
    second, and its write lands on the new shard."""
    a_url, b_url = two_urls
    uid, ns, _original, _listing = killed_moves(a_url, b_url, ("sealed",))["sealed"]
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
    _uid, ns, original, _listing = killed_moves(a_url, b_url, ("copied",))["copied"]
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
