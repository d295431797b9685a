"""The `MetadataCache` contract (cubby/cache/base.py), on memory, Redis and memcached."""

from __future__ import annotations

import threading

from cubby.cache.base import MetadataCache
from tests.helpers.cache_servers import Memcached


def test_a_miss_gives_one_lease_and_a_fill_under_it_is_read_back(cache: MetadataCache) -> None:
    value, lease = cache.get("k")
    assert value is None and lease
    assert cache.get("k") == (None, None), "a second reader must not get the lease"
    assert cache.fill("k", b"state-1", lease)
    assert cache.get("k") == (b"state-1", None)


def test_an_invalidation_voids_the_outstanding_lease(cache: MetadataCache) -> None:
    _, slow = cache.get("k")  # a reader misses and goes to the database (old state) ...
    assert slow
    cache.invalidate(["k"])  # ... a writer commits and invalidates ...
    _, fresh = cache.get("k")  # ... a new reader takes a new lease and reads the new state
    assert fresh and fresh != slow
    assert not cache.fill("k", b"old", slow), "a stale reader must not put back the old state"
    assert cache.get("k") == (None, None)
    assert cache.fill("k", b"new", fresh)
    assert cache.get("k") == (b"new", None)


def test_a_fence_covers_values_and_leases_until_the_invalidation(cache: MetadataCache) -> None:
    _, lease = cache.get("k")  # a reader is reading the old state ...
    assert lease
    cache.put("v", b"old")
    cache.fence(["k", "v"], "w1")  # ... a writer is about to commit
    assert cache.get("v") == (None, None), "a fenced value is not served"
    assert cache.values(["v"]) == [None]
    assert cache.get("k") == (None, None), "nobody gets a lease on a fenced key"
    assert not cache.fill("k", b"old", lease), "a lease taken before the fence is void"
    cache.invalidate(["k", "v"], "w1")  # the writer committed
    _, fresh = cache.get("k")
    assert fresh and cache.fill("k", b"new", fresh)
    assert cache.get("k") == (b"new", None)


def test_a_writers_invalidation_leaves_the_fence_of_another_writer(cache: MetadataCache) -> None:
    """Two writers of one key at once: the first one's invalidation must not lift the second
    one's fence, or a reader could fill the state between the two commits and keep it after
    the second (if that writer then died before its own invalidation)."""
    cache.put("v", b"old")
    cache.fence(["k", "v"], "w1")
    cache.fence(["k", "v"], "w2")
    cache.invalidate(["k", "v"], "w1")  # the first writer committed
    assert cache.get("k") == (None, None), "still fenced by the second writer"
    assert cache.values(["k", "v"]) == [None, None]
    cache.invalidate(["k"])  # a writer's retry, or a pending key: lifts nobody else's fence
    assert cache.get("k") == (None, None)
    cache.invalidate(["k", "v"], "w2")
    _, fresh = cache.get("k")
    assert fresh and cache.fill("k", b"new", fresh)
    assert cache.get("k") == (b"new", None)
    assert cache.get("v")[0] is None


def test_an_invalidation_before_the_fill_leaves_the_key_empty(cache: MetadataCache) -> None:
    _, lease = cache.get("k")
    assert lease
    cache.invalidate(["k"])
    assert not cache.fill("k", b"old", lease)
    value, again = cache.get("k")
    assert value is None and again


def test_a_lease_is_only_good_for_its_own_key_and_once(cache: MetadataCache) -> None:
    _, a = cache.get("a")
    _, b = cache.get("b")
    assert a and b
    assert not cache.fill("a", b"x", b)
    assert cache.fill("a", b"x", a)
    assert not cache.fill("a", b"y", a), "the marker is gone once filled"
    assert cache.get("a") == (b"x", None)


def test_put_stores_without_a_lease_and_invalidate_removes_many(cache: MetadataCache) -> None:
    cache.put("p", b"\x00binary\xfe")  # any bytes but 0xFF, which marks a fence (cubby.cache.base)
    cache.put("q", b"")
    assert cache.get("p") == (b"\x00binary\xfe", None)
    assert cache.get("q") == (b"", None)
    cache.invalidate(["p", "q", "never-set"])
    assert cache.get("p")[0] is None
    assert cache.get("q")[0] is None


def test_values_reads_many_keys_and_takes_no_lease(cache: MetadataCache) -> None:
    cache.put("a", b"1")
    cache.put("b", b"")
    _, lease = cache.get("leased")  # a lease marker is no value
    assert lease is not None
    assert cache.values(["a", "missing", "b", "leased"]) == [b"1", None, b"", None]
    assert cache.get("missing")[1] is not None  # values() left the miss without a lease
    assert cache.fill("leased", b"v", lease)
    assert cache.values(["leased"]) == [b"v"]


def test_concurrent_misses_hand_out_exactly_one_lease(cache: MetadataCache) -> None:
    cache.invalidate(["hot"])
    leases: list[str | None] = []
    barrier = threading.Barrier(8)

    def reader() -> None:
        barrier.wait()
        leases.append(cache.get("hot")[1])

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([x for x in leases if x]) == 1


def test_a_dead_memcached_is_a_miss_and_its_restart_is_empty(memcached: Memcached) -> None:
    from cubby.cache.memcached import MemcachedCache

    cache = MemcachedCache(memcached.url)
    try:
        cache.put("k", b"before")
        memcached.stop()
        assert cache.get("k") == (None, None), "unreachable: read the database, store nothing"
        cache.invalidate(["k"])  # nobody listens: nothing to delete, no error
        memcached.start()
        cache.breaker.ok()
        value, lease = cache.get("k")
        assert value is None and lease, "a restarted memcached holds nothing"
    finally:
        cache.close()
