"""The cache's failure cases, on real cache servers (a Redis and a memcached of the test's
own) shared by two `CachedStore`s on one database, as two server processes would share them.
Process A writes, process B reads. A dies between its commit and its invalidation, or is cut
off from the cache server there while B still reaches it (a `Partition`: A's requests time
out), or before its write; or the server is killed and started again. Each test fails on a
real staleness bug: B reads a state older than one that A's database holds after A's answer
(or, for a process that died, its retry's answer)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cubby.cache.base import CacheUnavailable, open_cache
from cubby.cache.store import CachedStore
from cubby.errors import BadRequest, Conflict, CubbyError, NotFound, Unauthorized
from cubby.metadata.store import SqlMetadataStore
from cubby.model import CommitRequest, User
from tests.helpers.cache_servers import CACHE_SERVERS, CacheServer, Partition, RedisServer, start_cache_server


@pytest.fixture(params=sorted(CACHE_SERVERS))
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CacheServer]:
    s = start_cache_server(request.param, tmp_path / "cache")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def partition(server: CacheServer) -> Iterator[Partition]:
    p = Partition(server)
    try:
        yield p
    finally:
        p.close()


class Killed(BaseException):
    """The process died here (not an error any handler of the store would catch)."""


class FaultyProcess(CachedStore):
    """A `CachedStore` reaching the cache through a `Partition`, whose write goes wrong
    between its database commit and its invalidation: ``killed``: the process dies there (no
    invalidation at all; its pending list dies with it); ``cut``: it loses the cache server
    there (the invalidation times out)."""

    def __init__(self, *args: Any, fault: str, partition: Partition, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.fault = fault
        self.partition = partition

    def invalidate(self, keys: Iterable[str], token: str | None = None) -> None:
        if self.fault == "killed":
            raise Killed
        self.partition.cut()
        try:
            super().invalidate(keys, token)
        finally:
            self.partition.heal()


Start = Callable[..., CachedStore]
FAULTS = ["killed", "cut"]


@pytest.fixture
def process(plain: SqlMetadataStore, server: CacheServer, partition: Partition) -> Iterator[Start]:
    """Start a "process": a `CachedStore` of its own (its own cache client and pending list)
    over the shared database and cache server; with ``fault``, a `FaultyProcess`."""
    made: list[CachedStore] = []

    def start(fault: str | None = None) -> CachedStore:
        cache = open_cache(server.url if fault is None else partition.url)
        assert cache is not None
        if fault is None:
            made.append(CachedStore(plain, cache, invalidation_deadline=0.3))
        else:
            made.append(FaultyProcess(plain, cache, invalidation_deadline=0.3, fault=fault, partition=partition))
        return made[-1]

    yield start
    for store in made:
        store.cache.close()


def unacknowledged(write: Callable[[], object]) -> None:
    with pytest.raises((Killed, CacheUnavailable)):
        write()


@pytest.mark.parametrize("fault", FAULTS)
def test_a_revocation_whose_invalidation_was_lost_is_seen_at_once_and_on_retry(process: Start, fault: str) -> None:
    a, b = process(fault), process()
    alice, _ = a.create_user("alice")
    tid, token = a.create_token(alice.id, "laptop")
    b.authenticate(token)
    b.authenticate(token)  # cached on B
    unacknowledged(lambda: a.revoke_token(alice.id, tid))
    with pytest.raises(Unauthorized):  # the write's fence: B reads the database
        b.authenticate(token)
    # The client asks again, via another process, and hears "no such token": from then on
    # the token must be dead everywhere.
    with pytest.raises(NotFound):
        process().revoke_token(alice.id, tid)
    with pytest.raises(Unauthorized):
        b.authenticate(token)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_commit_whose_invalidation_was_lost_is_seen_at_once_and_on_retry(process: Start, fault: str) -> None:
    a, b = process(fault), process()
    alice, _ = a.create_user("alice")
    first = process().commit(alice.id, alice.root_ns, CommitRequest("/f", 0, ())).entry
    assert first is not None and b.head(alice.root_ns) == first.rev  # cached on B
    assert b.stat(alice.root_ns, "/f").rev == first.rev
    again = CommitRequest("/f", 0, (), expected_rev=first.rev)
    unacknowledged(lambda: a.commit(alice.id, alice.root_ns, again))
    assert b.head(alice.root_ns) > first.rev
    assert b.stat(alice.root_ns, "/f").rev > first.rev
    with pytest.raises(Conflict):  # the retry: the file is no longer at the rev it expected
        process().commit(alice.id, alice.root_ns, again)
    assert b.stat(alice.root_ns, "/f").rev > first.rev


def shared_team(a: CachedStore, process: Start) -> tuple[User, User, int]:
    """alice shares /team with bob, who accepts (through a third process): (alice, bob, ns)."""
    alice, _ = a.create_user("alice")
    bob, _ = a.create_user("bob")
    owner = process()
    owner.mkdir(alice.id, alice.root_ns, "/team")
    ns = owner.sharing.share(alice.id, alice.root_ns, "/team", "bob").ns_id
    owner.sharing.accept(bob.id, bob.root_ns, ns)
    return alice, bob, ns


@pytest.mark.parametrize("fault", FAULTS)
def test_a_removal_whose_invalidation_was_lost_is_seen_at_once_and_on_retry(process: Start, fault: str) -> None:
    a, b = process(fault), process()
    alice, bob, ns = shared_team(a, process)
    assert b.principal_of(bob.id, "bob", bob.root_ns).can_read(ns)  # cached on B
    unacknowledged(lambda: a.sharing.remove_member(alice.id, ns, "bob"))
    assert not b.principal_of(bob.id, "bob", bob.root_ns).can_read(ns)
    with pytest.raises(CubbyError):  # bob is no member any more: the retry says so
        process().sharing.remove_member(alice.id, ns, "bob")
    assert not b.principal_of(bob.id, "bob", bob.root_ns).can_read(ns)


@pytest.mark.parametrize("fault", FAULTS)
def test_an_unshare_whose_invalidation_was_lost_is_seen_by_every_member_at_once_and_on_retry(
    process: Start, fault: str
) -> None:
    """The members an unshare changes beyond its actor (their memberships and the heads of
    their roots, where the mount goes) are fenced before it commits, like the actor's keys."""
    a, b = process(fault), process()
    alice, bob, ns = shared_team(a, process)
    assert b.principal_of(bob.id, "bob", bob.root_ns).can_read(ns)  # cached on B
    mounted = b.head(bob.root_ns)
    unacknowledged(lambda: a.sharing.unshare(alice.id, ns))
    assert not b.principal_of(bob.id, "bob", bob.root_ns).can_read(ns)
    assert b.head(bob.root_ns) > mounted
    with pytest.raises(CubbyError):  # no longer shared: the retry says so
        process().sharing.unshare(alice.id, ns)
    assert not b.principal_of(bob.id, "bob", bob.root_ns).can_read(ns)
    assert b.head(bob.root_ns) > mounted


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("how", ["remove", "leave"])
def test_the_root_head_of_a_member_who_goes_is_fenced(process: Start, fault: str, how: str) -> None:
    """A removal or a leave unmounts the folder from the member's root: that root's head is
    fenced before the change, not only invalidated after it."""
    a, b = process(fault), process()
    alice, bob, ns = shared_team(a, process)
    mounted = b.head(bob.root_ns)  # cached on B
    if how == "remove":
        unacknowledged(lambda: a.sharing.remove_member(alice.id, ns, "bob"))
    else:
        unacknowledged(lambda: a.sharing.leave(bob.id, ns))
    assert b.head(bob.root_ns) > mounted


@pytest.mark.parametrize("fault", FAULTS)
def test_two_writers_of_one_key_the_second_lost_after_its_commit(
    process: Start, plain: SqlMetadataStore, fault: str
) -> None:
    """W fences ``head:<ns>`` and waits for the namespace lock; A commits to the namespace and
    invalidates; B misses, takes a lease and reads the head between the two commits; W commits
    and dies (or is cut off) before its invalidation; B fills. A's invalidation must have left
    W's fence, so B's fill is refused and the head read afterwards is W's."""
    a, w, b = process(), process(fault), process()
    alice, _ = a.create_user("alice")
    ns = alice.root_ns
    b.head(ns)  # cached on B
    fence = w.writing([ns])
    fence.__enter__()  # W fenced; its commit is still to come
    assert a.commit(alice.id, ns, CommitRequest("/a", 0, ())).entry is not None

    def between() -> int:
        head = plain.head(ns)  # B's database read, under its lease, before W commits
        assert plain.commit(alice.id, ns, CommitRequest("/w", 0, ())).entry is not None  # W's commit
        return head

    b.through(f"head:{ns}", between)
    unacknowledged(lambda: fence.__exit__(None, None, None))  # W's invalidation is lost
    assert b.head(ns) == plain.head(ns)
    assert process().head(ns) == plain.head(ns)


def test_a_process_cut_off_from_the_cache_writes_nothing(
    process: Start, partition: Partition, plain: SqlMetadataStore
) -> None:
    """Its fence cannot be placed, so it refuses before its commit: nothing changed, and the
    cached state other processes read stays true."""
    a, b = process("cut"), process()
    alice, _ = a.create_user("alice")
    tid, token = a.create_token(alice.id, "laptop")
    b.authenticate(token)
    head = b.head(alice.root_ns)
    partition.cut()
    try:
        with pytest.raises(CacheUnavailable):
            a.revoke_token(alice.id, tid)
        with pytest.raises(CacheUnavailable):
            a.commit(alice.id, alice.root_ns, CommitRequest("/f", 0, ()))
    finally:
        partition.heal()
    assert plain.authenticate(token).user_id == b.authenticate(token).user_id == alice.id
    assert plain.head(alice.root_ns) == b.head(alice.root_ns) == head


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


def test_a_redis_that_persists_its_data_is_refused(tmp_path: Path) -> None:
    """Restarted from its append-only file it would bring back values older than changes
    acknowledged while it was down; `open_cache` says how to run it instead."""
    persisted = RedisServer(tmp_path / "aof", persist=True)
    (tmp_path / "aof").mkdir()
    persisted.start()
    try:
        with pytest.raises(BadRequest, match="appendonly"):
            open_cache(persisted.url)
    finally:
        persisted.stop()
