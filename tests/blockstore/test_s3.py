"""The S3 object store: the ObjectStore contract against a real S3 server process (moto's, and
Ceph RGW's under CUBBY_TEST_CEPH=1), its URL, and its behaviour under injected faults."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cubby.blockstore.objects import ObjectMissing, ObjectStore, ObjectStoreError
from cubby.blockstore.retrying import Backoff, RetryingObjectStore
from cubby.blockstore.s3 import S3Location, S3ObjectStore, open_s3_object_store
from cubby.errors import BadRequest
from tests.helpers.fault_proxy import Faults, fault_proxy
from tests.helpers.s3_servers import S3Server

FAST = Backoff(attempts=10, base=0.001, cap=0.01)


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The session's server, its credentials in the environment where the store looks for them."""
    for key, value in s3_server.credentials.items():
        monkeypatch.setenv(key, value)
    return s3_server


def fresh_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


# The ObjectStore contract, over a list of implementations (the folder store joins this list).
OBJECT_STORES = ["s3", "s3-small-pages"]


@pytest.fixture(params=OBJECT_STORES)
def object_store(request: pytest.FixtureRequest, s3: S3Server) -> Iterator[ObjectStore]:
    pages = 2 if request.param == "s3-small-pages" else 1000
    store = open_s3_object_store(s3.url(fresh_prefix()), backoff=FAST, list_page_size=pages)
    yield store
    store.close()


def test_put_get_ranges_delete_list(object_store: ObjectStore) -> None:
    data = os.urandom(100_000)
    assert isinstance(object_store, ObjectStore)
    object_store.put("packs/ab/one.pack", data)
    assert object_store.get("packs/ab/one.pack") == data
    assert object_store.get("packs/ab/one.pack", 1000, 5000) == data[1000:6000]
    assert object_store.get("packs/ab/one.pack", 99_000) == data[99_000:]
    assert object_store.get("packs/ab/one.pack", 0, 0) == b""
    object_store.put("packs/ab/one.pack", data)  # the same bytes again: harmless
    object_store.put("packs/cd/two.pack", b"")
    object_store.put("index/x", b"12345")
    assert sorted(object_store.list()) == [
        ("index/x", 5),
        ("packs/ab/one.pack", 100_000),
        ("packs/cd/two.pack", 0),
    ]
    assert sorted(object_store.list("packs/")) == [("packs/ab/one.pack", 100_000), ("packs/cd/two.pack", 0)]
    assert list(object_store.list("nothing/")) == []
    object_store.delete("packs/ab/one.pack")
    object_store.delete("packs/ab/one.pack")  # idempotent
    with pytest.raises(ObjectMissing):
        object_store.get("packs/ab/one.pack")
    with pytest.raises(ObjectMissing):
        object_store.get("packs/ab/one.pack", 0, 0)
    assert sorted(name for name, _ in object_store.list()) == ["index/x", "packs/cd/two.pack"]


def test_a_short_read_is_an_error_never_fewer_bytes(object_store: ObjectStore) -> None:
    object_store.put("p", b"0123456789")
    with pytest.raises(ObjectStoreError) as info:
        object_store.get("p", 5, 10)
    assert not isinstance(info.value, ObjectMissing)
    with pytest.raises(ObjectStoreError):
        object_store.get("p", 10, 1)
    with pytest.raises(ObjectStoreError):
        object_store.get("p", 50, 1)


def test_bad_names_are_refused(object_store: ObjectStore) -> None:
    for name in ["", "/abs", "a//b", "a/../b", "./a", "a b", "a/", "é"]:
        with pytest.raises(BadRequest):
            object_store.put(name, b"x")
    assert list(object_store.list()) == []


def test_listing_yields_each_name_once_across_pages(object_store: ObjectStore) -> None:
    names = {f"packs/{i:02d}.pack": i for i in range(7)}
    for name, size in names.items():
        object_store.put(name, b"x" * size)
    listed = list(object_store.list("packs/"))
    assert len(listed) == len(names) and dict(listed) == names


def test_threads_share_one_store(object_store: ObjectStore) -> None:
    blobs = {f"c/{i}": os.urandom(1000 + i) for i in range(24)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: object_store.put(*item), blobs.items()))
        got = dict(zip(blobs, pool.map(object_store.get, blobs)))
    assert got == blobs


def test_prefix_keeps_stores_apart(s3: S3Server) -> None:
    a = open_s3_object_store(s3.url(fresh_prefix() + "/deep"), backoff=FAST)
    b = open_s3_object_store(s3.url(fresh_prefix()), backoff=FAST)
    a.put("x", b"a")
    assert list(b.list()) == [] and list(a.list()) == [("x", 1)]
    with pytest.raises(ObjectMissing):
        b.get("x")


def test_url_parsing() -> None:
    loc = S3Location.parse("s3://bucket/some/prefix/?endpoint=http://127.0.0.1:9000&region=eu-west-1")
    assert loc == S3Location("bucket", "some/prefix/", "http://127.0.0.1:9000", "eu-west-1")
    assert S3Location.parse("s3://bucket") == S3Location("bucket")
    for bad in ["http://bucket/x", "s3:///x", "s3://b/x?endpoint=e&regoin=r", "s3://b/../x"]:
        with pytest.raises(BadRequest):
            S3Location.parse(bad)


def test_a_missing_bucket_is_a_final_error(s3: S3Server) -> None:
    calls = []
    store = RetryingObjectStore(
        S3ObjectStore(S3Location("no-such-bucket-here", "", s3.endpoint, "us-east-1")),
        FAST,
        sleep=calls.append,
    )
    with pytest.raises(ObjectStoreError) as info:
        store.put("x", b"x")
    assert not info.value.retryable and calls == []  # refused at once, not retried


# Faults: a proxy between the store and the server answers 503 SlowDown or cuts connections.


def through(s3: S3Server, proxy_endpoint: str, prefix: str, backoff: Backoff = FAST) -> ObjectStore:
    return open_s3_object_store(s3.url(prefix, endpoint=proxy_endpoint), backoff=backoff)


def test_operations_succeed_through_slowdowns_and_cut_connections(s3: S3Server) -> None:
    prefix = fresh_prefix()
    blobs = {f"packs/{i}.pack": os.urandom(50_000 + i) for i in range(30)}
    with fault_proxy(s3.endpoint, Faults(slowdown=0.15, cut_put=0.2, cut_get=0.2, seed=7)) as proxy:
        store = through(s3, proxy.endpoint, prefix)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda item: store.put(*item), blobs.items()))
            for name, data in blobs.items():
                assert store.get(name) == data
                assert store.get(name, 100, 20_000) == data[100:20_100]
            assert sorted(store.list()) == sorted((n, len(d)) for n, d in blobs.items())
            list(pool.map(store.delete, list(blobs)[:10]))
    assert proxy.counts["slowdown"] > 0 and proxy.counts["cut_put"] > 0 and proxy.counts["cut_get"] > 0
    direct = open_s3_object_store(s3.url(prefix))
    assert sorted(direct.list()) == sorted((n, len(d)) for n, d in list(blobs.items())[10:])
    for name, data in list(blobs.items())[10:]:
        assert direct.get(name) == data


def test_a_put_cut_every_time_fails_and_leaves_nothing(s3: S3Server) -> None:
    prefix = fresh_prefix()
    with fault_proxy(s3.endpoint, Faults(cut_put=1.0)) as proxy:
        store = through(s3, proxy.endpoint, prefix, Backoff(attempts=3, base=0.001, cap=0.01))
        with pytest.raises(ObjectStoreError) as info:
            store.put("packs/torn.pack", os.urandom(200_000))
    assert info.value.retryable and proxy.counts["cut_put"] == 3
    direct = open_s3_object_store(s3.url(prefix))
    assert list(direct.list()) == []
    with pytest.raises(ObjectMissing):
        direct.get("packs/torn.pack")


def test_a_get_cut_every_time_fails_rather_than_returning_part(s3: S3Server) -> None:
    prefix = fresh_prefix()
    data = os.urandom(100_000)
    open_s3_object_store(s3.url(prefix)).put("p", data)
    with fault_proxy(s3.endpoint, Faults(cut_get=1.0)) as proxy:
        store = through(s3, proxy.endpoint, prefix, Backoff(attempts=3, base=0.001, cap=0.01))
        for args in [(), (10, 50_000), (10, None)]:
            with pytest.raises(ObjectStoreError) as info:
                store.get("p", *args)
            assert info.value.retryable
    assert proxy.counts["cut_get"] == 9


def test_slowdown_every_time_gives_up_after_the_attempts(s3: S3Server) -> None:
    waits: list[float] = []
    with fault_proxy(s3.endpoint, Faults(slowdown=1.0)) as proxy:
        store = RetryingObjectStore(
            S3ObjectStore(S3Location.parse(s3.url(fresh_prefix(), endpoint=proxy.endpoint))),
            Backoff(attempts=4, base=0.1, cap=0.25),
            sleep=waits.append,
            rng=lambda: 1.0,
        )
        with pytest.raises(ObjectStoreError) as info:
            store.put("x", b"x")
    assert "SlowDown" in info.value.message and proxy.requests["PUT"] == 4
    assert waits == [0.1, 0.2, 0.25]  # exponential, capped (jitter pinned to its top here)
