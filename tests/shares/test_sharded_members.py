"""Accept, remove, leave and unshare on two shards (PostgreSQL + PostgreSQL, PostgreSQL +
MariaDB), the owner's root and the shared folder on shard ``near``, the member's root on
``far``: each operation stopped after each of its steps (as a crash would stop it) never lets
anyone reach more than the shard's ``members`` rows allow, and the same call again finishes it,
as does recovery once the process that ran it is gone (its ``member_intents`` row)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, update

from cubby.blockstore.memory import MemoryBlockStore
from cubby.cache.memory import MemoryCache
from cubby.cache.store import CachedStore
from cubby.errors import NamespaceMoving, NotFound
from cubby.metadata.schema import member_intents, members, memberships, namespaces
from cubby.metadata.sharded_shares import STEPS
from cubby.metadata.store import SqlMetadataStore
from cubby.model import User
from tests.metadata.conftest import put_file
from tests.shares.conftest import TwoShards


class Crash(Exception):
    """Stands for the process dying after a step committed."""


def truth(store: SqlMetadataStore, ns: int, user: User) -> bool:
    """Whether ``user`` is an active member of ``ns`` on its shard (the truth)."""
    row = store.router.db_for(ns).read(
        lambda c: c.execute(select(members.c.state).where(members.c.ns_id == ns, members.c.user_id == user.id)).first()
    )
    return row is not None and row.state == "active"


def reach(store: SqlMetadataStore, ns: int, user: User) -> bool:
    """Whether ``user``'s requests reach ``ns``: authentication's view (directory copy and
    mount), or a link's (`user_can_read`, the directory alone)."""
    p = store.principal_of(user.id, user.name, user.root_ns)
    return ns in p.namespaces or store.user_can_read(user.id, ns)


def copies(store: SqlMetadataStore, ns: int) -> dict[int, str]:
    rows = store.router.directory.read(lambda c: c.execute(select(memberships).where(memberships.c.ns_id == ns)).all())
    return {int(r.user_id): str(r.state) for r in rows}


def intents(store: SqlMetadataStore, ns: int) -> int:
    """How many membership operations on ``ns`` carry an intent."""
    return int(
        store.router.db_for(ns).read(
            lambda c: c.execute(select(func.count()).select_from(member_intents).where(member_intents.c.ns_id == ns)).scalar()
        )
    )


def stop_after(two_shards: TwoShards, step: str, by_owner: bool = False) -> tuple[SqlMetadataStore, int, User, User, Any]:
    """Alice's folder /S shared with bob (their roots on two shards), the operation of
    ``step`` stopped after it as a crash would (``by_owner``: alice removes bob rather than
    bob leaving); answers the store, S, alice, bob and the operation (to run it again)."""
    store = two_shards.open("near")
    far = two_shards.open("far")
    alice, _ = store.create_user("alice")
    bob, _ = far.create_user("bob")
    router = store.router
    assert (router.placement(alice.root_ns).shard, router.placement(bob.root_ns).shard) == ("near", "far")
    blocks = MemoryBlockStore()
    put_file(store, blocks, alice.id, alice.root_ns, "/S/doc.txt")
    ns = store.sharing.share(alice.id, alice.root_ns, "/S", "bob", "editor").ns_id
    assert router.placement(ns).shard == "near"
    sharded = store.sharing.sharded
    assert sharded is not None

    op = step.split(":")[0]
    if op == "accept":
        run = lambda: store.sharing.accept(bob.id, bob.root_ns, ns)  # noqa: E731
    else:
        store.sharing.accept(bob.id, bob.root_ns, ns)
        assert reach(store, ns, bob) and truth(store, ns, bob)
        if op == "drop" and by_owner:
            run = lambda: store.sharing.remove_member(alice.id, ns, "bob")  # noqa: E731
        elif op == "drop":
            run = lambda: store.sharing.leave(bob.id, ns)  # noqa: E731
        else:
            run = lambda: store.sharing.unshare(alice.id, ns)  # noqa: E731

    def crash(name: str) -> None:
        if name == step:
            raise Crash(name)

    sharded.fault = crash
    with pytest.raises(Crash):
        run()
    sharded.fault = None
    # Stopped after the step: nobody reaches more than the truth allows.
    for who in (alice, bob):
        assert not reach(store, ns, who) or truth(store, ns, who), (step, who.name)
    if step in ("unshare:revoked", "unshare:unmounted"):
        # Sealed while its contents go back to the owner's root: no write lands there now.
        with pytest.raises(NamespaceMoving):
            store.mkdir(alice.id, ns, "/late")
    assert intents(store, ns) == 1, "the stopped operation's intent is there for recovery"
    return store, ns, alice, bob, run


def finished(store: SqlMetadataStore, step: str, ns: int, alice: User, bob: User) -> None:
    """The operation of ``step`` is done: memberships, mounts, copies and contents agree."""
    op = step.split(":")[0]
    assert intents(store, ns) == 0
    if op == "accept":
        assert reach(store, ns, bob) and truth(store, ns, bob)
        mounts = store.principal_of(bob.id, bob.name, bob.root_ns).mounts
        assert mounts == {"/S": ns}, "one mount, made once"
        assert [e.path for e in store.list(ns, "/").entries] == ["/doc.txt"]
    elif op == "drop":
        assert not reach(store, ns, bob) and not truth(store, ns, bob)
        assert store.principal_of(bob.id, bob.name, bob.root_ns).mounts == {}
        assert [e.path for e in store.list(bob.root_ns, "/").entries] == [], "no mount left in bob's root"
        assert copies(store, ns) == {alice.id: "active"}
        with pytest.raises(NotFound):
            store.sharing.leave(bob.id, ns)  # nothing left to leave
    else:
        for who in (alice, bob):
            assert not reach(store, ns, who) and not truth(store, ns, who)
        assert copies(store, ns) == {}
        assert store.stat(alice.root_ns, "/S").kind == "folder"
        assert [e.path for e in store.list(alice.root_ns, "/S").entries] == ["/S/doc.txt"]
        assert store.principal_of(bob.id, bob.name, bob.root_ns).mounts == {}
        assert [e.path for e in store.list(bob.root_ns, "/").entries] == [], "no mount left in bob's root"
        row = store.router.db_for(ns).read(
            lambda c: c.execute(select(namespaces.c.kind).where(namespaces.c.ns_id == ns)).one()
        )
        assert row.kind == "retired"
        store.mkdir(alice.id, alice.root_ns, "/S/after")  # a plain folder again: writes land


@pytest.mark.parametrize("step", STEPS)
def test_membership_steps_never_grant_more_than_the_truth(two_shards: TwoShards, step: str) -> None:
    store, ns, alice, bob, run = stop_after(two_shards, step)
    run()  # the same call again finishes it
    finished(store, step, ns, alice, bob)


@pytest.mark.parametrize(
    ("step", "by_owner"), [(s, False) for s in STEPS] + [(s, True) for s in STEPS if s.startswith("drop:")]
)
def test_recovery_finishes_a_membership_operation_whose_process_is_gone(
    two_shards: TwoShards, step: str, by_owner: bool
) -> None:
    """Stopped after each step, then recovery instead of the same call: it leaves the
    intent of a live process alone, and once that process is gone (its lease ran out)
    finishes the operation and deletes the intent."""
    store, ns, alice, bob, _ = stop_after(two_shards, step, by_owner)
    assert store.sharing.recover() == 0, "the intent's process is alive: not recovery's"
    assert intents(store, ns) == 1
    store.router.db_for(ns).write(
        lambda c: c.execute(update(member_intents).where(member_intents.c.ns_id == ns).values(lease_until=0.0))
    )
    # Between the crash and recovery nobody reaches more than the truth.
    for who in (alice, bob):
        assert not reach(store, ns, who) or truth(store, ns, who), (step, who.name)
    assert store.sharing.recover() == 1
    finished(store, step, ns, alice, bob)
    assert store.sharing.recover() == 0


def test_removal_by_the_owner_across_shards(two_shards: TwoShards) -> None:
    """The owner removes a member whose root is on the other shard, stopped after the copy
    went: the member reaches nothing; removing again finishes."""
    store = two_shards.open("near")
    alice, _ = store.create_user("alice")
    bob, _ = two_shards.open("far").create_user("bob")
    store.mkdir(alice.id, alice.root_ns, "/S")
    ns = store.sharing.share(alice.id, alice.root_ns, "/S", "bob", "viewer").ns_id
    store.sharing.accept(bob.id, bob.root_ns, ns)
    sharded = store.sharing.sharded
    assert sharded is not None

    def crash(name: str) -> None:
        if name == "drop:copy":
            raise Crash(name)

    sharded.fault = crash
    with pytest.raises(Crash):
        store.sharing.remove_member(alice.id, ns, "bob")
    sharded.fault = None
    assert not reach(store, ns, bob) and truth(store, ns, bob)  # narrower than the truth, never wider
    store.sharing.remove_member(alice.id, ns, "bob")
    assert not truth(store, ns, bob) and store.principal_of(bob.id, bob.name, bob.root_ns).mounts == {}


def test_recovery_through_the_cache_invalidates_what_it_changed(two_shards: TwoShards) -> None:
    """An unshare stopped after the members' mounts went, read through the metadata cache,
    then recovered through it (as the server does at start): the owner's root and the
    memberships it changed are read anew, not from the cache."""
    store, ns, alice, bob, _ = stop_after(two_shards, "unshare:unmounted")
    cached = CachedStore(store, MemoryCache())
    assert cached.stat(alice.root_ns, "/S").kind == "mount"  # cached now
    assert ns in cached.principal_of(alice.id, alice.name, alice.root_ns).namespaces
    store.router.db_for(ns).write(
        lambda c: c.execute(update(member_intents).where(member_intents.c.ns_id == ns).values(lease_until=0.0))
    )
    assert cached.sharing.recover() == 1
    assert cached.stat(alice.root_ns, "/S").kind == "folder"
    assert ns not in cached.principal_of(alice.id, alice.name, alice.root_ns).namespaces
    finished(store, "unshare:unmounted", ns, alice, bob)
