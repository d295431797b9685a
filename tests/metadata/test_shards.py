"""A metadata store on two shards (PostgreSQL + PostgreSQL, PostgreSQL + MariaDB): where
namespaces go, their ids, authentication from the directory, chunks and collection across
shards. The contract suite (test_store.py) runs on the same deployments."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from cubby.blockstore.memory import MemoryBlockStore
from cubby.cache.memory import MemoryCache
from cubby.cache.store import CachedStore
from cubby.client.api import ApiClient
from cubby.config import ConfigError, parse_shards
from cubby.core.proofs import proof_hex
from cubby.metadata.possession import Claim
from cubby.metadata.schema import blocks, memberships, ns_chunks
from cubby.metadata.shards import LOCAL_BITS, UnknownShard, allocate_ns_id, placement_key, write_membership
from cubby.metadata.store import SqlMetadataStore, open_store
from cubby.model import ChunkRef, CommitRequest
from tests.conftest import TWO_SHARDS, two_shard_urls
from tests.helpers.live_server import ROOT, LiveServer
from tests.metadata.conftest import put_file, random_chunks, request


@pytest.fixture(params=TWO_SHARDS)
def sharded(request: pytest.FixtureRequest) -> Iterator[SqlMetadataStore]:
    directory, shards = two_shard_urls(request.param)
    store = open_store(directory, shards=shards)
    yield store
    store.close()


def test_users_roots_go_to_the_emptier_shard_with_ids_no_other_shard_gives(sharded: SqlMetadataStore) -> None:
    router = sharded.router
    assert not router.single
    alice, _ = sharded.create_user("alice")
    bob, _ = sharded.create_user("bob")
    carol, _ = sharded.create_user("carol")
    assert [router.placement(u.root_ns).shard for u in (alice, bob, carol)] == ["far", "near", "far"]
    assert router.db_for(alice.root_ns) is router.shards["far"]
    assert router.db_for(bob.root_ns) is router.directory
    # The top bits are the shard's number; every id is a safe JavaScript integer.
    far, near = router.shard_number("far"), router.shard_number("near")
    assert far != near
    assert alice.root_ns >> LOCAL_BITS == carol.root_ns >> LOCAL_BITS == far
    assert bob.root_ns >> LOCAL_BITS == near
    assert len({alice.root_ns, bob.root_ns, carol.root_ns}) == 3
    assert all(u.root_ns < 2**53 for u in (alice, bob, carol))
    # Each namespace row is on its own shard only.
    assert sharded.head(alice.root_ns) == 0 and sharded.head(bob.root_ns) == 0
    with pytest.raises(Exception):  # noqa: B017 - the row is not on the directory's shard
        sharded.shards.by_name["near"].reads.head(alice.root_ns)


def test_namespace_ids_are_unique_under_concurrent_allocation(sharded: SqlMetadataStore) -> None:
    router = sharded.router
    got: list[int] = []
    lock = threading.Lock()

    def allocate(shard: str) -> None:
        for _ in range(10):
            ns = allocate_ns_id(router, shard)
            with lock:
                got.append(ns)

    threads = [threading.Thread(target=allocate, args=(s,)) for s in ("near", "far", "near", "far")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 40


def test_authentication_reads_the_directory_and_the_roots_shard(sharded: SqlMetadataStore) -> None:
    alice, token = sharded.create_user("alice")
    bob, _ = sharded.create_user("bob")
    p = sharded.authenticate(token)
    assert (p.user_id, p.root_ns, p.namespaces) == (alice.id, alice.root_ns, {alice.root_ns: "owner"})
    assert sharded.user_can_read(alice.id, alice.root_ns)
    assert not sharded.user_can_read(alice.id, bob.root_ns)
    # A membership exists for authentication when the directory's copy says it is active.
    sharded.router.directory.write(lambda c: write_membership(c, alice.id, bob.root_ns, "viewer", "invited"))
    assert not sharded.user_can_read(alice.id, bob.root_ns)
    sharded.router.directory.write(lambda c: write_membership(c, alice.id, bob.root_ns, "viewer", "active"))
    assert sharded.user_can_read(alice.id, bob.root_ns)
    rows = sharded.router.directory.read(lambda c: c.execute(select(memberships)).all())
    assert [(r.user_id, r.ns_id, r.role, r.state) for r in rows] == [(alice.id, bob.root_ns, "viewer", "active")]


def test_chunks_are_possessed_per_shard_and_never_joined(sharded: SqlMetadataStore) -> None:
    blocks_store = MemoryBlockStore()
    alice, _ = sharded.create_user("alice")  # far
    bob, _ = sharded.create_user("bob")  # near, the chunk database's
    items = random_chunks(2)
    put_file(sharded, blocks_store, alice.id, alice.root_ns, "/a.bin", items)
    hashes = [h for h, _ in items]
    assert sharded.chunk_readable([alice.root_ns], hashes) == set(hashes)
    assert sharded.chunk_readable([bob.root_ns], hashes) == set()
    assert sharded.chunk_readable([bob.root_ns, alice.root_ns], hashes) == set(hashes)
    # With their sizes, for a download that states its length before reading a chunk.
    assert sharded.readable_sizes([bob.root_ns, alice.root_ns], hashes) == {h: len(d) for h, d in items}
    assert sharded.readable_sizes([bob.root_ns], hashes) == {}
    # A commit that may read alice's namespace uses her chunks without uploading (two shards asked).
    res = sharded.commit(bob.id, bob.root_ns, request("/b.bin", items), readable=[alice.root_ns])
    assert res.committed
    # Possession proofs limited to bob's own namespaces do not reach alice's chunks ...
    other, odata = random_chunks(1)[0]
    put_file(sharded, blocks_store, alice.id, alice.root_ns, "/c.bin", [(other, odata)])
    nonce = sharded.challenge(bob.id, bob.root_ns, other, len(odata))
    claim = Claim(other, len(odata), proof_hex(bytes.fromhex(nonce), odata))
    assert sharded.accept_proofs(bob.id, bob.root_ns, [claim], blocks_store, within=[bob.root_ns]).proven == []
    # ... and globally they do, granting the chunk on bob's shard.
    assert sharded.accept_proofs(bob.id, bob.root_ns, [claim], blocks_store).proven == [other]
    assert sharded.commit(bob.id, bob.root_ns, request("/c.bin", [(other, odata)])).committed
    near = sharded.router.shards["near"]
    assert near.read(lambda c: c.execute(select(ns_chunks.c.hash).where(ns_chunks.c.ns_id == bob.root_ns)).all())


def test_a_commit_on_a_shard_touches_its_chunks_on_the_chunk_database(sharded: SqlMetadataStore) -> None:
    blocks_store = MemoryBlockStore()
    alice, _ = sharded.create_user("alice")  # far: not the chunk database
    items = random_chunks(1)
    put_file(sharded, blocks_store, alice.id, alice.root_ns, "/a.bin", items)
    chunk_db = sharded.router.chunks
    chunk_db.write(lambda c: c.execute(blocks.update().values(touched_at=0.0)))
    before = time.time()
    assert sharded.commit(alice.id, alice.root_ns, request("/copy.bin", items)).committed
    touched = chunk_db.read(lambda c: c.execute(select(blocks.c.touched_at)).scalar_one())
    assert touched >= before, "the commit touched the chunk before its shard transaction"


def test_collection_asks_every_shard(sharded: SqlMetadataStore) -> None:
    blocks_store = MemoryBlockStore()
    alice, _ = sharded.create_user("alice")  # far
    bob, _ = sharded.create_user("bob")  # near
    shared = random_chunks(1)
    only_alice = random_chunks(1)
    put_file(sharded, blocks_store, alice.id, alice.root_ns, "/s.bin", shared)
    put_file(sharded, blocks_store, bob.id, bob.root_ns, "/s.bin", shared)
    put_file(sharded, blocks_store, alice.id, alice.root_ns, "/o.bin", only_alice)
    for path in ("/s.bin", "/o.bin"):
        sharded.delete(alice.id, alice.root_ns, path, forget_through=10**9)
    stats = sharded.collect_garbage(blocks_store, grace_seconds=-1)
    assert stats.deleted == 1
    assert blocks_store.present([only_alice[0][0], shared[0][0]]) == {shared[0][0]}, "bob's reference kept it"
    assert sharded.blocklist(bob.root_ns, "/s.bin")[1][0].hash == shared[0][0]


def test_a_move_between_shards_lands_once_with_its_history_left_behind(sharded: SqlMetadataStore) -> None:
    """A cross-namespace move between roots on two shards: its steps run on each shard
    (metadata/moves.py); the item leaves one and arrives in the other, whole."""
    blocks_store = MemoryBlockStore()
    alice, _ = sharded.create_user("alice")  # far
    bob, _ = sharded.create_user("bob")  # near
    assert sharded.router.db_for(alice.root_ns) is not sharded.router.db_for(bob.root_ns)
    put_file(sharded, blocks_store, alice.id, alice.root_ns, "/x/a.bin", random_chunks(1))
    moved = sharded.moves.move(alice.id, alice.root_ns, "/x", bob.root_ns, "/y")
    assert (moved.ns_id, moved.path) == (bob.root_ns, "/y")
    assert [e.path for e in sharded.list(bob.root_ns, "/y").entries] == ["/y/a.bin"]
    assert sharded.list(alice.root_ns, "/").entries == []


def test_placements_are_read_through_the_cache_and_forgotten(sharded: SqlMetadataStore) -> None:
    cache = MemoryCache()
    cached = CachedStore(sharded, cache)
    alice, token = cached.create_user("alice")
    assert cached.authenticate(token).root_ns == alice.root_ns
    assert cache.get(placement_key(alice.root_ns))[0] is not None, "the placement was cached"
    sharded.router.forget(alice.root_ns)
    assert cache.get(placement_key(alice.root_ns))[0] is None
    assert cached.stat(alice.root_ns, "/").kind == "folder"
    # Every write on the far shard is seen by the next cached read, as on one database.
    e = cached.commit(alice.id, alice.root_ns, CommitRequest("/a", 0, ())).entry
    assert e is not None and cached.head(alice.root_ns) == e.rev == cached.stat(alice.root_ns, "/a").rev
    assert [x.name for x in cached.list(alice.root_ns, "/").entries] == ["a"]
    cached.move(alice.id, alice.root_ns, "/a", "/b")
    assert [x.name for x in cached.list(alice.root_ns, "/").entries] == ["b"]
    cached.delete(alice.id, alice.root_ns, "/b")
    assert cached.list(alice.root_ns, "/").entries == []


def test_shard_flags_are_checked() -> None:
    assert parse_shards(("a=sqlite:///x", "b = postgresql://h/db")) == {"a": "sqlite:///x", "b": "postgresql://h/db"}
    for bad in (("a",), ("=x",), ("a=x", "a=y"), ("bad name=x",)):
        with pytest.raises(ConfigError):
            parse_shards(bad)


def test_a_server_on_two_shards_serves_users_of_both(tmp_path: Path) -> None:
    """`cubby user add` and `cubby serve` with --directory and --shard: a file goes up and comes
    back through HTTP for a user on each shard, and a link made by the user on the far shard
    resolves (its row is on that shard)."""
    directory, shards = two_shard_urls("pg+pg")
    flags = ["--directory", directory, *(a for name, url in shards.items() for a in ("--shard", f"{name}={url}"))]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    users = {}
    for name in ("alice", "bob"):
        out = subprocess.run(
            [sys.executable, "-m", "cubby", "user", "add", name, "--data", str(tmp_path / "data"), *flags, "--json"],
            check=True, capture_output=True, env=env, stdin=subprocess.DEVNULL,
        )
        users[name] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    with LiveServer(tmp_path / "data", extra_args=flags) as server:
        for name, info in users.items():
            data = f"{name}'s bytes".encode()
            h = hashlib.sha256(data).hexdigest()
            with ApiClient(server.url, info["token"]) as api:
                assert not api.commit("/f.txt", len(data), [ChunkRef(h, len(data))]).committed
                api.upload_chunks(int(info["root_ns"]), [(h, data)])
                assert api.commit("/f.txt", len(data), [ChunkRef(h, len(data))]).committed
                assert b"".join(api.download("/f.txt")) == data
        store = open_store(directory, shards=shards)
        try:
            placed = {n: store.router.placement(int(i["root_ns"])).shard for n, i in users.items()}
            assert placed == {"alice": "far", "bob": "near"}
            alice = store.get_user("alice")
            entry = store.stat(alice.root_ns, "/f.txt")
            _, token = store.links.create(alice.id, alice.root_ns, entry.node_id)
        finally:
            store.close()
        assert httpx.get(f"{server.url}/l/{token}", follow_redirects=True).content == b"alice's bytes"


def test_a_process_missing_a_shard_says_so(sharded: SqlMetadataStore) -> None:
    alice, _ = sharded.create_user("alice")  # far
    directory = sharded.router.directory.url.render_as_string(hide_password=False)
    partial = open_store(directory, shards={"near": directory, "other": directory})
    try:
        with pytest.raises(UnknownShard) as err:
            partial.stat(alice.root_ns, "/")
        assert "'far'" in err.value.message and err.value.status == 503
    finally:
        partial.close()
