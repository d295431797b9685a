"""The S3 object store on a real S3 server process (moto's, and Ceph RGW's under
CUBBY_TEST_CEPH=1): what the ObjectStore contract tests (test_objects.py, which run on it too)
do not cover: listing across pages, prefixes, its URL, and its behaviour under injected faults."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cubby.blockstore.objects import (
    ObjectMissing,
    ObjectStore,
    ObjectStoreError,
    StreamingPut,
    open_object_store,
    signed_read,
)
from cubby.blockstore.packs import PackBlockStore
from cubby.blockstore.retrying import Backoff, RetryingObjectStore
from cubby.blockstore.s3 import PROBE_BODY, SEND_BLOCK, S3Location, S3ObjectStore, open_s3_object_store
from cubby.blockstore.s3body import BodyCheck
from cubby.errors import BadRequest, ChunkMismatch
from cubby.metadata.chunk_index import SqlChunkIndex
from cubby.metadata.store import open_store
from tests.helpers.fault_proxy import FaultProxy, Faults, decoded_body, fault_proxy
from tests.helpers.s3_servers import S3Server, fresh_prefix

FAST = Backoff(attempts=10, base=0.001, cap=0.01)


def packs_sent(proxy: FaultProxy) -> list[tuple[dict[str, str], bytes]]:
    """The PUTs the proxy recorded, but for the store's probes of the server's checks, each
    with what it stores (a body signed in chunks decoded)."""
    sent = [(headers, decoded_body(headers, body)) for headers, body in proxy.puts]
    return [(headers, body) for headers, body in sent if body != PROBE_BODY]


def named(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data


@pytest.fixture
def s3(s3_server: S3Server) -> S3Server:
    return s3_server


def test_listing_yields_each_name_once_across_pages(s3: S3Server) -> None:
    object_store = open_s3_object_store(s3.url(fresh_prefix()), list_page_size=2)
    names = {f"packs/{i:02d}.pack": i for i in range(7)}
    for name, size in names.items():
        object_store.put(name, b"x" * size)
    listed = list(object_store.list("packs/"))
    assert len(listed) == len(names) and dict(listed) == names


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
    assert S3Location.parse("s3://bucket") == S3Location("bucket", checksum=None)  # found out at the first PUT
    assert S3Location.parse("s3://bucket?checksum=auto").checksum is None
    assert S3Location.parse("s3://b?checksum=crc32").checksum is BodyCheck.CRC32
    assert S3Location.parse("s3://b?checksum=md5").checksum is BodyCheck.MD5
    assert S3Location.parse("s3://b/p?region=r&checksum=sha256").checksum is BodyCheck.SHA256
    assert S3Location.parse("s3://b?checksum=sha256-chunked").checksum is BodyCheck.SHA256_CHUNKED
    with pytest.raises(BadRequest, match="auto, crc32, md5, sha256 or sha256-chunked"):
        S3Location.parse("s3://b?checksum=sha256-chunk")
    assert S3Location.parse("s3://b").timeout == 20.0
    assert S3Location.parse("s3://b?timeout=2.5").timeout == 2.5
    for bad in [
        "http://bucket/x", "s3:///x", "s3://b/x?endpoint=e&regoin=r", "s3://b/../x", "s3://b?checksum=crc64",
        "s3://b?timeout=0", "s3://b?timeout=-1", "s3://b?timeout=soon", "s3://b?timeout=nan", "s3://b?timeout=1e9",
    ]:
        with pytest.raises(BadRequest):
            S3Location.parse(bad)


def test_downloads_and_public_endpoint_in_the_url() -> None:
    assert S3Location.parse("s3://b").direct is False
    assert S3Location.parse("s3://b?downloads=proxied").direct is False
    direct = S3Location.parse("s3://b?endpoint=http://10.0.0.5:7480&downloads=direct&public_endpoint=https://s3.example.com")
    assert direct.direct is True and direct.public_endpoint == "https://s3.example.com"
    with pytest.raises(BadRequest, match=r"proxied \(through the blocks processes\) or direct"):
        S3Location.parse("s3://b?downloads=straight")
    with pytest.raises(BadRequest, match="for downloads=direct or uploads=direct"):
        S3Location.parse("s3://b?public_endpoint=https://s3.example.com")
    for bad in ["ftp://s3.example.com", "s3.example.com", "https://"]:
        with pytest.raises(BadRequest, match="public_endpoint"):
            S3Location.parse(f"s3://b?downloads=direct&public_endpoint={bad}")


def test_uploads_in_the_url() -> None:
    assert S3Location.parse("s3://b").direct_uploads is False
    assert S3Location.parse("s3://b?uploads=proxied").direct_uploads is False
    put = S3Location.parse("s3://b?uploads=direct&public_endpoint=https://s3.example.com")
    assert put.direct_uploads is True and put.direct is False and put.public_endpoint == "https://s3.example.com"
    with pytest.raises(BadRequest, match=r"uploads 'up': proxied \(through the blocks processes\) or direct"):
        S3Location.parse("s3://b?uploads=up")


def test_a_signed_read_names_the_public_endpoint_and_signs_its_range(s3: S3Server) -> None:
    """With ``downloads=direct`` the store signs a GET of exactly the bytes asked for, on the
    endpoint clients reach (through the retrying and read-ahead wrappers); without it, none."""
    prefix = fresh_prefix()
    plain = open_s3_object_store(s3.url(prefix))
    assert signed_read(plain, "packs/ab/x.pack", 8, 100) is None
    plain.close()
    with fault_proxy(s3.endpoint, Faults(check_query=s3.secret)) as proxy:
        store = open_s3_object_store(s3.url(prefix) + f"&downloads=direct&public_endpoint={proxy.endpoint}")
        try:
            store.put("packs/ab/x.pack", b"0123456789" * 20)
            read = signed_read(store, "packs/ab/x.pack", 8, 100)
            assert read is not None and read.headers == {"Range": "bytes=8-107"}
            assert read.url.startswith(f"{proxy.endpoint}/{s3.bucket}/{prefix}/packs/ab/x.pack?")
            assert "X-Amz-SignedHeaders=host%3Brange" in read.url and "X-Amz-Expires=300" in read.url
            got = httpx.get(read.url, headers=dict(read.headers), timeout=30)
            assert got.status_code == 206 and got.content == (b"0123456789" * 20)[8:108]
            assert httpx.get(read.url, headers={"Range": "bytes=0-107"}, timeout=30).status_code == 403
            assert signed_read(store, "packs/ab/x.pack", 8, 0) is None
        finally:
            store.close()


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


def test_a_missing_bucket_is_named_by_the_probe_that_found_it(s3: S3Server) -> None:
    """The first PUT probes how bodies are checked; on a bucket that is not there the probe's
    own refusal (NoSuchBucket on its PUT) is the error, not that of its tidying DELETE."""
    store = S3ObjectStore(S3Location("no-such-bucket-here", "", s3.endpoint, "us-east-1"))
    with pytest.raises(ObjectStoreError) as info:
        store.put("x", b"x")
    assert "NoSuchBucket" in info.value.message and info.value.message.startswith("put ")


def test_an_endpoint_that_refuses_connections_is_retried_until_it_answers(s3: S3Server) -> None:
    """An S3 server restarting refuses connections for a moment: that is retryable (botocore
    files it apart from dropped connections), and the retrying store rides it out. The port is
    bound but not listening, so it refuses; during the store's second wait a proxy to the S3
    server starts listening on it."""
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{refusing.getsockname()[1]}"
    location = S3Location.parse(s3.url(fresh_prefix(), endpoint=endpoint) + "&checksum=sha256")
    with pytest.raises(ObjectStoreError) as info:
        S3ObjectStore(location).put("x", b"x")
    assert info.value.retryable, info.value.message
    waits: list[float] = []
    with contextlib.ExitStack() as up:

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 2:
                up.enter_context(fault_proxy(s3.endpoint, Faults(), sock=refusing))

        store = RetryingObjectStore(S3ObjectStore(location), FAST, sleep=sleep)
        store.put("x", b"bytes")
        assert len(waits) == 2 and store.get("x") == b"bytes"


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


@pytest.mark.parametrize("check", [None, BodyCheck.SHA256_CHUNKED], ids=["default", "chunked"])
def test_a_pack_in_parts_cut_on_the_way_is_sent_whole_again(s3: S3Server, check: BodyCheck | None) -> None:
    """The parts come from a generator, taken once; each retry after a cut sends all of them,
    with the check the store found (or was given: signed in chunks, the chunks' hashers handed
    with the parts are used again on every attempt, never fed). (The store's first PUT, which
    finds out how bodies are checked, is made before the faults.)"""
    prefix = fresh_prefix()
    parts = [os.urandom(70_000), b"\x00", os.urandom(90_000)]
    known = {0: hashlib.sha256(parts[0])}
    with fault_proxy(s3.endpoint, Faults(check_chunks=s3.secret), record_puts=True) as proxy:
        url = s3.url(prefix, endpoint=proxy.endpoint) + (f"&checksum={check.value}" if check else "")
        store = open_s3_object_store(url, backoff=FAST)
        assert isinstance(store, StreamingPut)
        store.put("checks/first", b"settles the body check")
        proxy.faults, proxy.puts[:] = Faults(check_chunks=s3.secret, cut_put=0.5, seed=1), []
        proxy.counts.clear()
        for i in range(4):
            store.put_parts(f"packs/{i}.pack", (p for p in parts), known)
    assert proxy.counts["cut_put"] > 0 and proxy.counts["bad_chunk"] == 0
    assert all(body == b"".join(parts) for _, body in packs_sent(proxy))
    assert known[0].hexdigest() == hashlib.sha256(parts[0]).hexdigest()
    direct = open_s3_object_store(s3.url(prefix))
    assert all(direct.get(f"packs/{i}.pack") == b"".join(parts) for i in range(4))


def test_packs_on_s3_store_a_batch_and_a_bad_chunk_leaves_nothing(s3: S3Server, tmp_path) -> None:
    """The pack store hands S3 its packs in parts as their chunks are verified (the store is a
    `StreamingPut`): a batch over several packs reads back, and a bad chunk after packs of its
    batch were put leaves no pack in the bucket and nothing in the index."""
    meta = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    objects = open_s3_object_store(s3.url(fresh_prefix()), backoff=FAST)
    pool = ThreadPoolExecutor(2)
    store = PackBlockStore(objects, SqlChunkIndex(meta.db), target_size=64 * 1024, executor=pool)
    try:
        items = [named(os.urandom(300_000)) for _ in range(6)]
        bad = (named(b"claimed")[0], os.urandom(300_000))
        with pytest.raises(ChunkMismatch):
            store.put_many([*items, bad])
        assert list(objects.list("packs/")) == [] and list(store.iterate()) == []
        assert store.put_many(items) == [True] * 6
        assert len(list(objects.list("packs/"))) == 6
        assert all(store.get(n) == d for n, d in items)
    finally:
        store.close()
        pool.shutdown()
        meta.close()


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


@pytest.mark.parametrize("check", list(BodyCheck))
def test_a_pack_in_parts_goes_out_as_one_put_carrying_its_check(s3: S3Server, check: BodyCheck) -> None:
    """`put_parts` sends the parts as one body, not joined first, with the check asked for:
    CRC32 in x-amz-checksum-crc32 with an unsigned payload (the default), Content-MD5, a
    signed payload (x-amz-content-sha256 is the body's SHA-256), or a payload signed in chunks
    (aws-chunked, each chunk's signature checked by the proxy as AWS would). What the server
    stores is the concatenation; the proxy sees exactly one PUT of it."""
    prefix = fresh_prefix()
    parts = [b"CUBBYPK1", *(p for _ in range(40) for p in (b"\x00", os.urandom(4096))), b"\x01", os.urandom(300_000)]
    whole = b"".join(parts)
    with fault_proxy(s3.endpoint, Faults(check_chunks=s3.secret), record_puts=True) as proxy:
        url = s3.url(prefix, endpoint=proxy.endpoint) + f"&checksum={check.value}"
        store = open_s3_object_store(url, backoff=FAST)
        assert isinstance(store, StreamingPut)
        store.put_parts("packs/ab/p.pack", iter(parts))
    [(headers, body)] = proxy.puts
    assert proxy.counts["bad_chunk"] == 0
    if check is BodyCheck.SHA256_CHUNKED:
        assert headers["content-encoding"] == "aws-chunked" and headers["x-amz-decoded-content-length"] == str(len(whole))
        body = decoded_body(headers, body)
    else:
        assert headers["content-length"] == str(len(whole))
    assert body == whole
    crc = base64.b64encode(zlib.crc32(whole).to_bytes(4, "big")).decode()
    md5 = base64.b64encode(hashlib.md5(whole).digest()).decode()
    expected = {
        BodyCheck.CRC32: ("x-amz-checksum-crc32", crc, "UNSIGNED-PAYLOAD"),
        BodyCheck.MD5: ("content-md5", md5, "UNSIGNED-PAYLOAD"),
        BodyCheck.SHA256: (None, None, hashlib.sha256(whole).hexdigest()),
        BodyCheck.SHA256_CHUNKED: (None, None, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
    }[check]
    header, value, payload = expected
    assert headers["x-amz-content-sha256"] == payload
    others = {"x-amz-checksum-crc32", "content-md5"} - {header}
    assert not others & set(headers) and (header is None or headers[header] == value)
    assert open_s3_object_store(s3.url(prefix)).get("packs/ab/p.pack") == whole


def damaged_bodies_are_sent_again(s3: S3Server, prefix: str, faults: Faults, refused: str) -> None:
    """Through a proxy that damages PUT bodies (``faults``: half of them, one byte each) and
    checks them as ``faults`` says, new stores' puts all land right: refusals (counted under
    ``refused``) after the first probe's, and every object reads back as it was put."""
    with fault_proxy(s3.endpoint, faults) as proxy:
        store = open_s3_object_store(s3.url(prefix, endpoint=proxy.endpoint), backoff=FAST)
        for i in range(8):
            store.put(f"packs/y{i}.pack", bytes([i]) * 50_000)
    assert proxy.counts["garble_put"] > 0 and proxy.counts[refused] > 1
    direct = open_s3_object_store(s3.url(prefix), backoff=FAST)
    assert all(direct.get(f"packs/y{i}.pack") == bytes([i]) * 50_000 for i in range(8))


def test_by_default_puts_carry_crc32_where_the_server_checks_it(s3: S3Server) -> None:
    """With no ``checksum`` in the URL, the first PUT asks the server (through a proxy that
    checks x-amz-checksum-crc32 as AWS does): a probe with a wrong CRC32 is refused and one with
    the right CRC32 accepted, so packs go out with CRC32 and an unsigned payload; the probe
    object is gone afterwards, and a body damaged on the way is refused and sent again."""
    prefix = fresh_prefix()
    packs = {f"packs/{i}.pack": os.urandom(30_000 + i) for i in range(6)}
    with fault_proxy(s3.endpoint, Faults(check_crc32=True), record_puts=True) as proxy:
        store = open_s3_object_store(s3.url(prefix, endpoint=proxy.endpoint), backoff=FAST)
        for name, data in packs.items():
            store.put(name, data)
    assert proxy.counts["bad_crc32"] == 1  # the probe's wrong CRC32, and nothing else
    sent = packs_sent(proxy)
    assert [body for _, body in proxy.puts[:2]] == [PROBE_BODY] * 2 and len(sent) == len(packs)
    assert len(proxy.puts) == 2 + len(packs)  # no other probe: CRC32 settled it
    for (headers, body), data in zip(sent, packs.values()):
        assert body == data and headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert headers["x-amz-checksum-crc32"] == base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    direct = open_s3_object_store(s3.url(prefix), backoff=FAST)
    assert sorted(name for name, _ in direct.list()) == sorted(packs)
    damaged_bodies_are_sent_again(s3, prefix, Faults(check_crc32=True, garble_put=0.5, seed=5), "bad_crc32")


def test_by_default_puts_are_signed_in_chunks_where_the_server_checks_those_and_not_crc32(s3: S3Server) -> None:
    """Where the server ignores x-amz-checksum-crc32 (moto here, Ceph RGW before 19) but checks
    the signature of each chunk of a body signed in chunks (Ceph RGW, MinIO, Garage, AWS; moto
    does not, so the proxy checks them for it), the default signs bodies in chunks: the probe
    of a wrong chunk signature is refused and the right one stored, and packs go out so, each
    stored as sent; a body damaged on the way is refused and sent again."""
    if s3.kind != "moto":
        pytest.skip("whether this server ignores CRC32 depends on its version; moto's does")
    prefix = fresh_prefix()
    packs = {f"packs/{i}.pack": os.urandom(30_000 + i) for i in range(4)}
    with fault_proxy(s3.endpoint, Faults(check_chunks=s3.secret), record_puts=True) as proxy:
        store = open_s3_object_store(s3.url(prefix, endpoint=proxy.endpoint), backoff=FAST)
        for name, data in packs.items():
            store.put(name, data)
    assert proxy.counts["bad_chunk"] == 1  # the probe's wrong signature, and nothing else
    probes = [decoded_body(headers, body) for headers, body in proxy.puts[:3]]
    assert probes == [PROBE_BODY] * 3  # a wrong CRC32 (taken: so no more), then chunks wrong and right
    sent = packs_sent(proxy)
    assert [body for _, body in sent] == list(packs.values())
    assert all(headers["x-amz-content-sha256"] == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" for headers, _ in sent)
    direct = open_s3_object_store(s3.url(prefix), backoff=FAST)
    assert sorted(name for name, _ in direct.list()) == sorted(packs)
    damaged_bodies_are_sent_again(s3, prefix, Faults(check_chunks=s3.secret, garble_put=0.5, seed=5), "bad_chunk")


def test_on_ceph_the_default_check_is_one_it_makes_and_not_a_whole_signed_payload(s3: S3Server) -> None:
    """Ceph RGW checks chunk signatures (and, from 19, CRC32): the default is one of those two,
    never the costlier payload signed whole, nor a check the server ignores."""
    if s3.kind != "ceph":
        pytest.skip("moto checks neither: its default is the whole signed payload (the test below)")
    store = S3ObjectStore(S3Location.parse(s3.url(fresh_prefix())))
    assert store.body_check() in (BodyCheck.CRC32, BodyCheck.SHA256_CHUNKED)
    store.put("packs/p.pack", b"x" * 100_000)
    assert store.get("packs/p.pack") == b"x" * 100_000 and [name for name, _ in store.list()] == ["packs/p.pack"]


def test_by_default_puts_are_signed_whole_where_the_server_checks_neither(s3: S3Server) -> None:
    """moto stores a body whatever its x-amz-checksum-crc32 says, and decodes a body signed in
    chunks without checking the signatures: there the default is a payload signed whole (its
    SHA-256 in the request's signature), which every SigV4 server checks, so that no body
    damaged on the way is stored unchecked. The probes are made once, at the first PUT, and
    their object deleted."""
    if s3.kind != "moto":
        pytest.skip("whether this server ignores CRC32 depends on its version; moto's does")
    prefix = fresh_prefix()
    with fault_proxy(s3.endpoint, Faults(), record_puts=True) as proxy:
        store = open_s3_object_store(s3.url(prefix, endpoint=proxy.endpoint), backoff=FAST)
        assert list(store.list()) == [] and proxy.puts == []  # reading alone probes nothing
        for i in range(3):
            store.put(f"packs/{i}.pack", bytes([i]) * 10_000)
    sent = packs_sent(proxy)
    # a wrong CRC32, then a wrong chunk signature: each taken, so neither check is the server's
    assert [decoded_body(h, b) for h, b in proxy.puts[:2]] == [PROBE_BODY] * 2 and len(proxy.puts) == 2 + 3
    for i, (headers, body) in enumerate(sent):
        assert body == bytes([i]) * 10_000 and headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
        assert "x-amz-checksum-crc32" not in headers and "content-md5" not in headers
    assert sorted(name for name, _ in open_s3_object_store(s3.url(prefix)).list()) == [f"packs/{i}.pack" for i in range(3)]


@pytest.mark.parametrize("check", [BodyCheck.MD5, BodyCheck.SHA256, BodyCheck.SHA256_CHUNKED])
def test_a_put_body_damaged_on_the_way_is_refused_and_sent_again(
    s3: S3Server, check: BodyCheck, request: pytest.FixtureRequest
) -> None:
    """With a check every S3 server makes (Content-MD5, the signed payload's SHA-256, whole or
    in chunks), a body
    with one byte changed on the way is refused (BadDigest, XAmzContentSHA256Mismatch), never
    stored, and the retry stores the right bytes; refused every time, the put fails and
    nothing is stored. Ceph RGW (and AWS) check both; moto's server checks neither (it stores
    the damaged body), which strict xfail records, so that we hear when it starts to. The
    default CRC32 is left out: Ceph RGW before 19 and moto ignore x-amz-checksum-* (see
    `cubby.blockstore.s3body`), so neither server here can show it refused."""
    if s3.kind == "moto":
        request.applymarker(pytest.mark.xfail(strict=True, reason="moto checks no body checksum"))
    prefix = fresh_prefix()
    blobs = {f"packs/{i}.pack": os.urandom(20_000 + i) for i in range(12)}
    with fault_proxy(s3.endpoint, Faults(garble_put=0.5, seed=3)) as proxy:
        url = s3.url(prefix, endpoint=proxy.endpoint) + f"&checksum={check.value}"
        store = open_s3_object_store(url, backoff=FAST)
        for name, data in blobs.items():
            store.put(name, data)
    assert proxy.counts["garble_put"] > 0
    direct = open_s3_object_store(s3.url(prefix), backoff=FAST)
    assert {name: direct.get(name) for name in blobs} == blobs
    with fault_proxy(s3.endpoint, Faults(garble_put=1.0)) as proxy:
        url = s3.url(prefix, endpoint=proxy.endpoint) + f"&checksum={check.value}"
        store = open_s3_object_store(url, backoff=Backoff(attempts=3, base=0.001, cap=0.01))
        with pytest.raises(ObjectStoreError):
            store.put("packs/never.pack", os.urandom(5000))
    with pytest.raises(ObjectMissing):
        direct.get("packs/never.pack")


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


class _Stalling:
    """A store whose every call fails as a timed-out request does, after ``takes`` seconds of a
    fake clock (or at once)."""

    def __init__(self, clock: list[float], takes: float) -> None:
        self.clock, self.takes, self.calls = clock, takes, 0

    def put(self, name: str, data: bytes) -> None:
        self.calls += 1
        self.clock[0] += self.takes
        failure = ObjectStoreError(f"put {name} failed: Read timeout")
        failure.retryable = True
        raise failure

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        yield "a", 1
        self.put("list", b"")


@pytest.mark.parametrize(("takes", "attempts"), [(20.0, 2), (0.001, 8)])
def test_retries_stop_at_the_deadline_when_each_attempt_waits_out_its_timeout(takes: float, attempts: int) -> None:
    """A store that never answers is tried only while an attempt could still end by the
    deadline (two of 20 s within 45 s); one that fails fast gets all its attempts."""
    clock = [0.0]
    inner = _Stalling(clock, takes)

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    store = RetryingObjectStore(
        inner,  # type: ignore[arg-type]  # a put and a list are all it needs
        Backoff(deadline=45.0, timeout=20.0), sleep=sleep, rng=lambda: 1.0, clock=lambda: clock[0],
    )
    with pytest.raises(ObjectStoreError) as info:
        store.put("x", b"x")
    assert inner.calls == attempts and info.value.retryable
    assert f"gave up after {attempts} attempts" in info.value.message
    assert clock[0] <= 45.0  # the call answered within its deadline


def test_a_listing_that_made_progress_gets_its_retries_afresh() -> None:
    """The deadline counts from the last name a listing yielded, so a long listing that fails
    late is still retried (and yields each name once)."""
    clock = [0.0]
    inner = _Stalling(clock, 20.0)
    store = RetryingObjectStore(
        inner,  # type: ignore[arg-type]  # a put and a list are all it needs
        Backoff(attempts=3, deadline=45.0, timeout=20.0), sleep=lambda s: None, rng=lambda: 0.0,
        clock=lambda: clock[0],
    )
    names = []
    with pytest.raises(ObjectStoreError):
        for name, _ in store.list():
            names.append(name)
            clock[0] += 100.0  # the caller takes its time between names
    assert names == ["a"] and inner.calls == 2  # retried although the call began 120 s before


def test_a_server_that_takes_requests_and_never_answers_is_given_up_in_time(s3: S3Server) -> None:
    """Through a proxy that holds every request without an answer: with ``timeout=0.5`` a PUT
    and a GET each fail (retryable, saying they gave up) after at most two attempts, where
    without a deadline they would make eight; once the proxy answers again, they succeed."""
    prefix = fresh_prefix()
    # Set up at the default timeout, and the short one with a named body check (so no
    # checksum probe of three requests, each of which a loaded moto may answer in 0.5 s).
    open_s3_object_store(s3.url(prefix), read_ahead=False).put("kept", b"kept bytes")
    with fault_proxy(s3.endpoint, Faults()) as proxy:
        store = open_s3_object_store(
            s3.url(prefix, endpoint=proxy.endpoint) + "&timeout=0.5&checksum=crc32", read_ahead=False
        )
        proxy.faults = Faults(stall=1.0)
        for call in (lambda: store.put("x", b"x"), lambda: store.get("kept")):
            before = proxy.counts["stall"]
            with pytest.raises(ObjectStoreError) as info:
                call()
            assert info.value.retryable and "gave up after" in info.value.message
            assert 1 <= proxy.counts["stall"] - before <= 2
        proxy.faults = Faults()
        store.put("x", b"x")
        assert store.get("kept") == b"kept bytes" and store.get("x") == b"x"


def test_open_object_store_by_s3_url(s3: S3Server) -> None:
    store = open_object_store(s3.url(fresh_prefix()))
    store.put("a/b", b"bytes")
    assert store.get("a/b", 1, 3) == b"yte" and list(store.list()) == [("a/b", 5)]


def test_the_ceph_tier_asked_for_and_absent_fails_and_says_how_to_start_it(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under CUBBY_TEST_CEPH=1 a missing cluster is an error in every Ceph test, never a skip:
    no s3.env where ceph-up.sh writes it, or nothing answering at its endpoint."""
    import socket

    from tests.helpers.s3_servers import ceph_server

    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    monkeypatch.setenv("CUBBY_CEPH_ENV", str(tmp_path / "s3.env"))
    with pytest.raises(RuntimeError, match=r"ceph-up\.sh"):
        ceph_server("cubby-test-absent")
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        (tmp_path / "s3.env").write_text(
            f"export S3_ENDPOINT=http://127.0.0.1:{port}\nexport AWS_ACCESS_KEY_ID=k\nexport AWS_SECRET_ACCESS_KEY=s\n"
        )
        with pytest.raises(RuntimeError, match=r"does not answer.*ceph-up\.sh"):
            ceph_server("cubby-test-absent")


def test_a_large_put_body_goes_out_in_large_socket_writes(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack's body is written to the socket in pieces of up to `SEND_BLOCK`, not the 128 KiB
    botocore chooses (each write a trip through urllib3, http.client and the kernel): a 4 MiB
    pack takes a handful of ``sendall`` calls (32 before), and is stored whole. The calls are
    counted on the real sockets, which still send."""
    prefix = fresh_prefix()
    store = open_s3_object_store(s3.url(prefix) + "&checksum=md5", backoff=FAST)
    data = os.urandom(4 * 1024 * 1024)
    sizes: list[int] = []
    real = socket.socket.sendall

    def counted(sock: socket.socket, buf: bytes | memoryview, *args: object) -> None:
        sizes.append(len(memoryview(buf)))
        real(sock, buf, *args)  # type: ignore[arg-type]

    with monkeypatch.context() as patched:
        patched.setattr(socket.socket, "sendall", counted)
        store.put("packs/ab/big.pack", data)
    body = [n for n in sizes if n > 4096]  # the request's head is its own write
    assert sum(body) >= len(data) and len(body) <= len(data) // SEND_BLOCK + 2, sizes
    assert open_s3_object_store(s3.url(prefix), backoff=FAST).get("packs/ab/big.pack") == data
