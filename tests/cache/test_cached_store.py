"""`CachedStore` over a real SQLite store and each cache: every write's invalidation makes the
next read see it, and a write whose invalidation cannot be confirmed is not acknowledged."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cubby.cache.base import CacheUnavailable, MetadataCache, open_cache
from cubby.cache.memory import MemoryCache
from cubby.cache.store import CachedStore
from cubby.errors import NotFound, Unauthorized
from cubby.metadata.store import SqlMetadataStore, open_store
from cubby.model import CommitRequest
from tests.cache.conftest import CACHES
from tests.conftest import TWO_SHARD_PARAMS, two_shard_urls


@pytest.mark.parametrize("cache_url", CACHES, indirect=True)
def test_reads_are_cached_and_every_change_is_seen_next(plain: SqlMetadataStore, cache_url: str) -> None:
    cache = open_cache(cache_url)
    assert cache is not None
    every_change_is_seen_next(plain, cache)


@pytest.mark.parametrize("kind", TWO_SHARD_PARAMS)
def test_every_change_is_seen_next_on_two_shards(kind: str) -> None:
    """The same on two shards (alice's root on the shard that is not the directory, bob's on
    it): tokens, memberships and placements come through the cache from the directory."""
    directory, shards = two_shard_urls(kind)
    plain = open_store(directory, shards=shards)
    try:
        every_change_is_seen_next(plain, MemoryCache())
    finally:
        plain.close()


def every_change_is_seen_next(plain: SqlMetadataStore, cache: MetadataCache) -> None:
    seen: list[str] = []
    store = CachedStore(plain, cache, count=lambda name, result: seen.append(result))
    alice, alice_token = store.create_user("alice")
    bob, _ = store.create_user("bob")
    p = store.authenticate(alice_token)
    assert store.authenticate(alice_token) == p
    assert seen.count("hit") >= 2, "the second authentication is served by the cache"

    store.mkdir(alice.id, alice.root_ns, "/team")
    head = store.head(alice.root_ns)
    made = store.mkdir_many(alice.id, alice.root_ns, ["/m1", "/m2"])
    assert store.head(alice.root_ns) == max(e.rev for e in made if not isinstance(e, Exception)) > head
    assert store.stat(alice.root_ns, "/m2").kind == "folder"
    head = store.head(alice.root_ns)
    e = store.commit(alice.id, alice.root_ns, CommitRequest("/team/a", 0, ())).entry
    assert e is not None and store.head(alice.root_ns) == e.rev > head
    assert store.stat(alice.root_ns, "/team/a").rev == e.rev
    assert [x.name for x in store.list(alice.root_ns, "/team").entries] == ["a"]
    store.delete(alice.id, alice.root_ns, "/team/a")
    with pytest.raises(NotFound):
        store.stat(alice.root_ns, "/team/a")
    assert store.list(alice.root_ns, "/team").entries == []

    change = store.sharing.share(alice.id, alice.root_ns, "/team", "bob")
    store.sharing.accept(bob.id, bob.root_ns, change.ns_id)
    assert "/team" in store.authenticate(alice_token).mounts, "the share is seen at once"
    assert store.principal_of(bob.id, "bob", bob.root_ns).can_read(change.ns_id)
    store.sharing.remove_member(alice.id, change.ns_id, "bob")
    assert not store.principal_of(bob.id, "bob", bob.root_ns).can_read(change.ns_id)

    tid, token = store.create_token(alice.id, "second")
    store.authenticate(token)
    store.revoke_token(alice.id, tid)
    with pytest.raises(Unauthorized):
        store.authenticate(token)
    cache.close()


class Unreachable(MemoryCache):
    """A cache that loses ``failures`` invalidations (a network fault, not a stopped server)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def invalidate(self, keys: Sequence[str], token: str | None = None) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise CacheUnavailable("lost")
        super().invalidate(keys, token)


def test_a_write_waits_for_its_invalidation_and_fails_closed(plain: SqlMetadataStore) -> None:
    flaky: MetadataCache = Unreachable(failures=3)
    store = CachedStore(plain, flaky, invalidation_deadline=5)
    alice, _ = store.create_user("alice")
    before = store.head(alice.root_ns)
    store.mkdir(alice.id, alice.root_ns, "/x")  # three lost invalidations, then one lands
    assert store.head(alice.root_ns) > before

    dead = Unreachable(failures=10**9)
    store = CachedStore(plain, dead, invalidation_deadline=0.2)
    cached = store.head(alice.root_ns)
    with pytest.raises(CacheUnavailable):
        store.mkdir(alice.id, alice.root_ns, "/y")  # committed, but never acknowledged
    assert plain.head(alice.root_ns) > cached
    assert store.head(alice.root_ns) == plain.head(alice.root_ns), "the write's fence is still there: read afresh"
    dead.failures = 0  # the cache answers again: the next write's invalidation carries the old keys
    other, _ = store.create_user("other")
    store.mkdir(other.id, other.root_ns, "/z")
    assert store.head(alice.root_ns) == plain.head(alice.root_ns)
