"""The cache's failure cases, on real cache servers (a Redis and a memcached of the test's
own) shared by two `CachedStore`s on one database, as two server processes would share them.
Process A writes, process B reads; between the steps that matter A is cut off from the cache
server while B still reaches it (a `Partition`: A's requests time out), or the server is
killed and started again. Each test fails on a real staleness bug: B reads a state older
than one that A's answers have acknowledged."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cubby.cache.base import CacheUnavailable, open_cache
from cubby.cache.store import CachedStore
from cubby.errors import Conflict, CubbyError, NotFound, Unauthorized
from cubby.metadata.store import SqlMetadataStore, open_store
from cubby.model import CommitRequest
from tests.helpers.cache_servers import CACHE_SERVERS, CacheServer, Partition, start_cache_server


@pytest.fixture(params=sorted(CACHE_SERVERS))
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CacheServer]:
    s = start_cache_server(request.param, tmp_path / "cache")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def plain(sqlite_url: str) -> Iterator[SqlMetadataStore]:
    store = open_store(sqlite_url)
    yield store
    store.close()


@pytest.fixture
def partition(server: CacheServer) -> Iterator[Partition]:
    p = Partition(server)
    try:
        yield p
    finally:
        p.close()


Start = Callable[..., CachedStore]


@pytest.fixture
def process(plain: SqlMetadataStore, server: CacheServer, partition: Partition) -> Iterator[Start]:
    """Start a "process": a `CachedStore` of its own (its own cache client and pending list)
    over the shared database and cache server; ``cut_off=True``: behind the partition."""
    made: list[CachedStore] = []

    def start(*, cut_off: bool = False) -> CachedStore:
        cache = open_cache(partition.url if cut_off else server.url)
        assert cache is not None
        made.append(CachedStore(plain, cache, invalidation_deadline=0.3))
        return made[-1]

    yield start
    for store in made:
        store.cache.close()


def lost_invalidation(partition: Partition, write: Callable[[], object]) -> None:
    """Run ``write`` in a process cut off from the cache server: it commits, but its
    invalidation is lost, so it must not be acknowledged."""
    partition.cut()
    try:
        with pytest.raises(CacheUnavailable):
            write()
    finally:
        partition.heal()


def test_a_revocation_retried_after_a_lost_invalidation_is_answered_only_once_delivered(
    process: Start, partition: Partition
) -> None:
    a, b = process(cut_off=True), process()
    alice, _ = a.create_user("alice")
    tid, token = a.create_token(alice.id, "laptop")
    b.authenticate(token)
    b.authenticate(token)  # cached on B
    lost_invalidation(partition, lambda: a.revoke_token(alice.id, tid))
    # The process that lost it died (its pending list with it); the client asks again, via a
    # new one, and hears "no such token": from then on the token must be dead everywhere.
    with pytest.raises(NotFound):
        process().revoke_token(alice.id, tid)
    with pytest.raises(Unauthorized):
        b.authenticate(token)


def test_a_commit_retried_after_a_lost_invalidation_conflicts_only_once_delivered(
    process: Start, partition: Partition
) -> None:
    a, b = process(cut_off=True), process()
    alice, _ = a.create_user("alice")
    first = a.commit(alice.id, alice.root_ns, CommitRequest("/f", 0, ())).entry
    assert first is not None and b.head(alice.root_ns) == first.rev  # cached on B
    lost_invalidation(partition, lambda: a.commit(alice.id, alice.root_ns, CommitRequest("/f", 0, (), expected_rev=first.rev)))
    with pytest.raises(Conflict):  # the retry: the file is no longer at the rev it expected
        process().commit(alice.id, alice.root_ns, CommitRequest("/f", 0, (), expected_rev=first.rev))
    assert b.head(alice.root_ns) > first.rev
    assert b.stat(alice.root_ns, "/f").rev > first.rev


def test_a_removal_retried_after_a_lost_invalidation_is_answered_only_once_delivered(
    process: Start, partition: Partition
) -> None:
    a, b = process(cut_off=True), process()
    alice, _ = a.create_user("alice")
    bob, _ = a.create_user("bob")
    a.mkdir(alice.id, alice.root_ns, "/team")
    ns = a.sharing.share(alice.id, alice.root_ns, "/team", "bob").ns_id
    a.sharing.accept(bob.id, bob.root_ns, ns)
    assert b.principal_of(bob.id, "bob", bob.root_ns).can_read(ns)  # cached on B
    lost_invalidation(partition, lambda: a.sharing.remove_member(alice.id, ns, "bob"))
    with pytest.raises(CubbyError):  # bob is no member any more: the retry says so
        process().sharing.remove_member(alice.id, ns, "bob")
    assert not b.principal_of(bob.id, "bob", bob.root_ns).can_read(ns)


def test_a_fill_racing_a_write_across_a_cache_restart_is_not_stored(
    process: Start, server: CacheServer, plain: SqlMetadataStore
) -> None:
    """B misses and takes a lease, reads the database; then the cache server dies, A writes
    (its invalidation finds nobody listening: acknowledged), the server comes back empty, and
    only then does B fill. The lease died with the server, so B's old value is refused."""
    a, b = process(), process()
    alice, _ = a.create_user("alice")
    before = plain.head(alice.root_ns)
    after: list[int] = []

    def load_then_race() -> int:
        head = plain.head(alice.root_ns)  # B's database read, under its lease
        server.stop()
        e = a.commit(alice.id, alice.root_ns, CommitRequest("/f", 0, ())).entry  # acknowledged
        assert e is not None
        after.append(e.rev)
        server.start()
        return head

    assert b.through(f"head:{alice.root_ns}", load_then_race) == before
    assert b.head(alice.root_ns) == after[0] > before
    assert process().head(alice.root_ns) == after[0]


def test_reads_fall_through_while_the_cache_is_down_and_writes_are_seen_after_it_returns(
    process: Start, server: CacheServer
) -> None:
    a, b = process(), process()
    alice, _ = a.create_user("alice")
    tid, token = a.create_token(alice.id, "laptop")
    b.authenticate(token)
    old = b.head(alice.root_ns)
    server.stop()
    e = a.commit(alice.id, alice.root_ns, CommitRequest("/f", 0, ())).entry  # nobody listens: acknowledged
    assert e is not None and b.head(alice.root_ns) == e.rev > old  # from the database
    a.revoke_token(alice.id, tid)
    with pytest.raises(Unauthorized):
        b.authenticate(token)
    server.start()  # empty
    assert b.head(alice.root_ns) == e.rev
    with pytest.raises(Unauthorized):
        b.authenticate(token)
