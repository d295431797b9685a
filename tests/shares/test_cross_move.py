"""A move between namespaces killed (SIGKILL) after each of its steps: recovery leaves the item
in exactly one place, whole (SQLite, PostgreSQL and MariaDB)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cubby.blockstore.memory import MemoryBlockStore
from cubby.cache.memory import MemoryCache
from cubby.cache.store import CachedStore
from cubby.errors import NotFound
from cubby.metadata.moves import STEPS
from cubby.metadata.reads import FileReads
from cubby.metadata.schema import move_intents, nodes
from cubby.metadata.store import open_store
from tests.metadata.conftest import put_file
from tests.shares.conftest import TwoShards

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def snapshot(reads, ns: int, folder: str) -> list[tuple[str, str | None]]:
    """What lies below ``folder`` of ``ns`` (``reads``: a store, or the `FileReads` of the
    namespace's shard)."""
    try:
        return sorted((e.path[len(folder):], e.content_hash) for e in reads.list(ns, folder, recursive=True).entries)
    except NotFound:
        return []


def check_journal(reads, ns: int) -> None:
    entries = reads.journal(ns, 0, limit=100_000)
    jids = [e.jid for e in entries]
    assert jids == list(range(jids[0], jids[0] + len(jids))) and jids[-1] == reads.head(ns), "journal gap"


@pytest.mark.parametrize("step", STEPS)
def test_a_move_killed_after_each_step_ends_in_exactly_one_place(store, step):
    url = store.db.url.render_as_string(hide_password=False)
    a, _ = store.create_user("alice")
    store.create_user("bob")
    killed_move(store, store, a, step, [url], lambda: open_store(url))


@pytest.mark.parametrize("step", STEPS)
def test_a_move_across_shards_killed_after_each_step_ends_in_exactly_one_place(two_shards: TwoShards, step):
    """The same on two shards (PG+PG, PG+MariaDB): the owner's root on shard near, the shared
    folder (the source) and the member's root on far; each step on its own shard."""
    on_a, on_b = two_shards.open("near"), two_shards.open("far")
    a, _ = on_a.create_user("alice")
    on_b.create_user("bob")
    args = [two_shards.directory, json.dumps(two_shards.shards)]
    killed_move(on_a, on_b, a, step, args, lambda: two_shards.open("far"))


def killed_move(owner_store, sharing_store, a, step, store_args, reopen) -> None:
    """Alice shares /Shared (through ``sharing_store``: its new namespaces' shard), a process
    moves /Item out of it into her root and is killed after ``step``; recovery through a
    cache holding both old heads leaves the item whole in exactly one place, and every head
    read after it is new."""
    blocks = MemoryBlockStore()
    for i in range(3):
        put_file(owner_store, blocks, a.id, a.root_ns, f"/Shared/Item/f{i}.txt")
    put_file(owner_store, blocks, a.id, a.root_ns, "/Shared/keep.txt")
    ns = sharing_store.sharing.share(a.id, a.root_ns, "/Shared", "bob", "editor").ns_id
    router = sharing_store.router
    reads = {n: FileReads(router.db_for(n)) for n in (ns, a.root_ns)}
    original = snapshot(reads[ns], ns, "/Item")
    assert len(original) == 3
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, str(HERE / "move_crasher.py"), *store_args, step, str(a.id), str(ns), "/Item", str(a.root_ns),
         "/Mine/Item"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr

    # Recovery through the metadata cache, with both heads cached before it: every head read
    # below (the journal check) must see what recovery wrote.
    fresh = CachedStore(reopen(), MemoryCache())
    stale = {n: fresh.head(n) for n in (ns, a.root_ns)}
    try:
        assert fresh.moves.recover() == 1
        assert fresh.moves.recover() == 0  # nothing left, and running it again changes nothing
        in_source, in_dest = snapshot(reads[ns], ns, "/Item"), snapshot(reads[a.root_ns], a.root_ns, "/Mine/Item")
        expected_in_dest = step in ("removed", "visible")
        assert (in_source, in_dest) == (([], original) if expected_in_dest else (original, []))
        for db in {id(d): d for d in router.shards.values()}.values():
            with db.reader.begin() as conn:
                assert conn.execute(select(func.count()).select_from(move_intents)).scalar_one() == 0
                assert conn.execute(select(func.count()).select_from(nodes).where(nodes.c.pending.is_not(None))).scalar_one() == 0
        for n in (ns, a.root_ns):
            check_journal(reads[n], n)
        if step == "removed":  # rolled forward: the destination got journal entries
            assert any(fresh.head(n) > stale[n] for n in stale)
        assert reads[ns].stat(ns, "/keep.txt").kind == "file"  # the rest of the folder is untouched
        # The item can move again from wherever it is: it is whole there.
        if expected_in_dest:
            fresh.moves.move(a.id, a.root_ns, "/Mine/Item", ns, "/Item")
        else:
            fresh.moves.move(a.id, ns, "/Item", a.root_ns, "/Mine/Item")
        assert sorted(
            e[1] for e in snapshot(reads[ns], ns, "/Item") + snapshot(reads[a.root_ns], a.root_ns, "/Mine/Item")
        ) == sorted(e[1] for e in original)
    finally:
        fresh.close()


def test_a_destination_that_changed_mid_move_still_receives_the_item(store):
    blocks = MemoryBlockStore()
    a, _ = store.create_user("alice")
    store.create_user("bob")
    put_file(store, blocks, a.id, a.root_ns, "/Shared/one.txt")
    put_file(store, blocks, a.id, a.root_ns, "/Shared/two.txt")
    ns = store.sharing.share(a.id, a.root_ns, "/Shared", "bob", "editor").ns_id
    store.mkdir(a.id, a.root_ns, "/Dest")

    # The destination name is taken between steps 2 and 4: the item lands beside it.
    store.moves.fault = lambda step: step == "pending" and put_file(store, blocks, a.id, a.root_ns, "/Dest/one.txt")
    moved = store.moves.move(a.id, ns, "/one.txt", a.root_ns, "/Dest/one.txt")
    assert moved.path == "/Dest/one (1).txt" and moved.ns_id == a.root_ns

    # The destination folder became a shared folder meanwhile: the item lands at the top.
    store.moves.fault = lambda step: step == "pending" and store.sharing.share(a.id, a.root_ns, "/Dest", "bob", "viewer")
    moved = store.moves.move(a.id, ns, "/two.txt", a.root_ns, "/Dest/two.txt")
    assert moved.path == "/two.txt" and moved.ns_id == a.root_ns
    store.moves.fault = None
    with pytest.raises(NotFound):
        store.stat(ns, "/two.txt")
    check_journal(store, a.root_ns)


@pytest.mark.parametrize("step", ["intent", "pending", "removed"])
def test_recovery_in_another_process_leaves_a_live_move_alone(store, step):
    """A process starting up (recovery runs at every start) while another is between two steps
    of a move must not undo or finish that move: its owner is alive."""
    url = store.db.url.render_as_string(hide_password=False)
    blocks = MemoryBlockStore()
    a, _ = store.create_user("alice")
    store.create_user("bob")
    for i in range(3):
        put_file(store, blocks, a.id, a.root_ns, f"/Shared/Item/f{i}.txt")
    ns = store.sharing.share(a.id, a.root_ns, "/Shared", "bob", "editor").ns_id
    original = snapshot(store, ns, "/Item")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "move_crasher.py"), url, step, str(a.id), str(ns), "/Item", str(a.root_ns),
         "/Mine/Item", "pause"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "paused", proc.stderr.read() if proc.stderr else ""
    fresh = open_store(url)
    try:
        assert fresh.moves.recover() == 0  # the owner is alive: nothing to recover
        out, err = proc.communicate("go\n", timeout=120)  # the owner goes on
        assert proc.returncode == 0 and "finished without being killed" in out, err
        assert snapshot(fresh, ns, "/Item") == [] and snapshot(fresh, a.root_ns, "/Mine/Item") == original
        with fresh.db.reader.begin() as conn:
            assert conn.execute(select(func.count()).select_from(move_intents)).scalar_one() == 0
    finally:
        fresh.close()
