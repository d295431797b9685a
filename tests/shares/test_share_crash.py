"""A share across shards killed (SIGKILL) after each of its steps, on two-shard deployments
(PostgreSQL + PostgreSQL, PostgreSQL + MariaDB), the owner's root on shard ``near`` and the new
namespace on shard ``far``: recovery leaves either no share (the folder as it was, writable
again) or a whole one, and a file deleted before the share is never visible to the member."""

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
from cubby.errors import NamespaceMoved, NotFound
from cubby.metadata.reads import FileReads
from cubby.metadata.schema import members, memberships, namespaces, placements, share_intents
from cubby.metadata.share_steps import STEPS
from tests.metadata.conftest import put_file
from tests.shares.conftest import TwoShards

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def files(reads: FileReads, ns: int, folder: str) -> list[tuple[str, str | None]]:
    try:
        listing = reads.list(ns, folder, recursive=True)
    except NotFound:
        return []
    cut = 0 if folder == "/" else len(folder)
    return sorted((e.path[cut:], e.content_hash) for e in listing.entries if e.kind == "file")


def count(db, table, *where) -> int:
    return int(db.read(lambda c: c.execute(select(func.count()).select_from(table).where(*where)).scalar_one()))


@pytest.mark.parametrize("step", STEPS)
def test_a_share_across_shards_killed_after_each_step_is_all_or_nothing(two_shards: TwoShards, step: str) -> None:
    on_a, on_b = two_shards.open("near"), two_shards.open("far")
    blocks = MemoryBlockStore()
    a, _ = on_a.create_user("alice")
    b, _ = on_b.create_user("bob")
    assert on_a.router.placement(a.root_ns).shard == "near" and on_b.router.placement(b.root_ns).shard == "far"
    for i in range(4):
        put_file(on_a, blocks, a.id, a.root_ns, f"/Shared/sub/f{i}.txt")
    on_a.delete(a.id, a.root_ns, "/Shared/sub/f3.txt")  # acknowledged before the share
    root_reads = FileReads(on_a.router.shard_db("near"))
    original = files(root_reads, a.root_ns, "/Shared")
    assert len(original) == 3
    linked = root_reads.stat(a.root_ns, "/Shared/sub/f0.txt")
    _, token = on_a.links.create(a.id, a.root_ns, linked.node_id)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, str(HERE / "share_crasher.py"), two_shards.directory, json.dumps(two_shards.shards), step,
         str(a.id), str(a.root_ns), "/Shared", "bob"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr

    # Recovery through the metadata cache, as the server runs it at start.
    fresh = CachedStore(two_shards.open("far"), MemoryCache())
    expected = 0 if step in ("reserved", "released") else 1  # no intent before, none left after
    assert fresh.sharing.recover() == expected
    assert fresh.sharing.recover() == 0  # nothing left, and again changes nothing
    router = fresh.store.router
    shard_a, shard_b = router.shard_db("near"), router.shard_db("far")
    for db in (shard_a, shard_b):
        assert count(db, share_intents) == 0
    root = root_reads.stat(a.root_ns, "/Shared")
    whole = step in ("mounted", "published", "released")
    if not whole:
        # No share: the folder as it was, no namespace on b, nothing in the directory.
        assert root.kind == "folder"
        assert files(root_reads, a.root_ns, "/Shared") == original
        assert count(shard_b, namespaces, namespaces.c.kind == "shared") == 0
        assert count(shard_b, members) == 0
        assert count(router.directory, memberships, memberships.c.user_id == b.id) == 0
        assert count(router.directory, placements, placements.c.state == "creating") <= 1  # a reserved id, unused
        # Writable again below the folder, and shareable.
        put_file(on_a, blocks, a.id, a.root_ns, "/Shared/after.txt")
        original = sorted([*original, ("/after.txt", root_reads.stat(a.root_ns, "/Shared/after.txt").content_hash)])
        ns = on_b.sharing.share(a.id, a.root_ns, "/Shared", "bob", "editor").ns_id
    else:
        assert root.kind == "mount" and root.target_ns is not None
        ns = int(root.target_ns)
    # A whole share: every live file, with the same content, on shard far; the member invited.
    shared = FileReads(shard_b)
    assert files(shared, ns, "/") == original
    assert router.placement(ns).shard == "far" and router.placement(ns).state == "live"
    assert count(shard_b, namespaces, namespaces.c.settling.is_(True)) == 0  # settled
    rows = {int(r.user_id): r.state for r in shard_b.read(lambda c: c.execute(select(members).where(members.c.ns_id == ns)).all())}
    assert rows == {a.id: "active", b.id: "invited"}
    copied = {
        int(r.user_id): r.state
        for r in router.directory.read(lambda c: c.execute(select(memberships).where(memberships.c.ns_id == ns)).all())
    }
    assert copied == rows
    with pytest.raises(NotFound):
        shared.stat(ns, "/sub/f3.txt")
    with pytest.raises(NotFound):
        shared.history(ns, "/sub/f3.txt")
    # A link made before the share follows its file, whatever became of the share.
    assert on_a.links.resolve(token).target.content_hash == linked.content_hash
    # Writes below the old folder in the root are refused retryably: they belong to S now.
    with pytest.raises(NamespaceMoved):
        put_file(on_a, blocks, a.id, a.root_ns, "/Shared/late.txt")
    fresh.close()
