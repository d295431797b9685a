"""Uploads straight to the bucket (``--blocks s3://…&uploads=direct``), through real HTTP on
loopback: a cubby server on moto (and on Ceph RGW under CUBBY_TEST_CEPH=1) hands out signed
PUTs of packs, the client sends them to the bucket through a proxy that checks every chunk's
signature as S3 does (moto does not; Ceph RGW checks them again), and the server indexes a
pack only once it is stored, and only one it laid out for that caller
(`cubby.blockstore.directput`, `cubby.server.bucketputs`, `cubby.client.bucketwrites`)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import httpx
import pytest

from cubby.client.api import ApiClient
from cubby.client.bucketreads import BadPlan
from cubby.client.bucketwrites import parse_put_plan
from cubby.client.download import download_file
from cubby.client.upload import upload_file
from tests.helpers.fault_proxy import Faults, fault_proxy
from tests.helpers.kill_mid_upload import kill_mid_upload
from tests.helpers.live_server import LiveServer
from tests.helpers.s3_servers import S3Server, fresh_prefix

pytestmark = pytest.mark.xdist_group("s3")


def put_server(tmp_path: Path, s3: S3Server, endpoint: str, name: str = "srv") -> LiveServer:
    """A whole cubby server with its packs on ``s3`` reached at ``endpoint``, ``uploads=direct``."""
    url = s3.url(fresh_prefix(), endpoint) + "&uploads=direct"
    return LiveServer(tmp_path / name, extra_args=["--blocks", url], env=s3.credentials)


def request_count(server: LiveServer, path: str) -> int:
    """How many requests for ``path`` the server logged, once every answered one has its line
    (`LiveServer.settled_logs`: a line is written just after its answer is sent)."""
    return server.settled_logs().count(f'"path":"{path}"')


def named(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data


def test_a_large_file_goes_to_the_bucket_and_comes_back_byte_identical(tmp_path: Path, s3_server: S3Server) -> None:
    """Its chunks reach the bucket from the client, none through the blocks role's upload
    route; a small file still goes through it; both download byte-identical."""
    rng = random.Random(1)
    big, small = rng.randbytes(7_000_000), b"a small file\n"
    (tmp_path / "big.bin").write_bytes(big)
    (tmp_path / "small.txt").write_bytes(small)
    with (
        fault_proxy(s3_server.endpoint, Faults(check_chunks=s3_server.secret)) as proxy,
        put_server(tmp_path, s3_server, proxy.endpoint) as server,
    ):
        token = server.add_user("ann")
        with ApiClient(server.url, token) as api:
            upload_file(api, tmp_path / "big.bin", "/big.bin")
            assert api.bucket_writes is True
            assert request_count(server, "/api/v1/blocks/upload") == 0
            assert request_count(server, "/api/v1/blocks/put_done") >= 1
            upload_file(api, tmp_path / "small.txt", "/small.txt")
            assert request_count(server, "/api/v1/blocks/upload") == 1
        assert proxy.counts["bad_chunk"] == 1  # the store's probe, whose wrong chunk must be refused; no other
        with ApiClient(server.url, token) as api:
            download_file(api, "/big.bin", tmp_path / "got.bin")
            download_file(api, "/small.txt", tmp_path / "got.txt")
        assert (tmp_path / "got.bin").read_bytes() == big
        assert (tmp_path / "got.txt").read_bytes() == small
        # Uploaded again by another user: every chunk is proven, none is sent anywhere.
        bob = server.add_user("bob")
        puts = request_count(server, "/api/v1/blocks/put_plan")
        with ApiClient(server.url, bob) as api:
            upload_file(api, tmp_path / "big.bin", "/copy.bin")
        assert request_count(server, "/api/v1/blocks/put_plan") == puts


def test_puts_the_bucket_cuts_or_refuses_fall_back_to_the_blocks_role(tmp_path: Path, s3_server: S3Server) -> None:
    """Clients reach the bucket through a proxy of their own (``public_endpoint``), which cuts
    every PUT halfway, then answers 503 SlowDown to each: the chunks go through the blocks role
    instead, and after two failures in a row the client stops trying the bucket; once the
    bucket takes PUTs again, a new client puts there. Every file downloads byte-identical."""
    rng = random.Random(5)
    files = {f"/f{i}.bin": rng.randbytes(2_000_000 + i) for i in range(6)}
    for name, data in files.items():
        (tmp_path / name.strip("/")).write_bytes(data)
    check = Faults(check_chunks=s3_server.secret)
    with (
        fault_proxy(s3_server.endpoint, check) as servers_way,
        fault_proxy(s3_server.endpoint, check) as clients_way,
    ):
        url = s3_server.url(fresh_prefix(), servers_way.endpoint) + f"&uploads=direct&public_endpoint={clients_way.endpoint}"
        with LiveServer(tmp_path / "srv", extra_args=["--blocks", url], env=s3_server.credentials) as server:
            token = server.add_user("ann")
            names = iter(files)
            for faults, fault in ((Faults(check_chunks=s3_server.secret, cut_put=1.0), "cut_put"), (Faults(slowdown=1.0), "slowdown")):
                clients_way.faults = faults
                with ApiClient(server.url, token) as api:
                    for name in (next(names), next(names)):
                        upload_file(api, tmp_path / name.strip("/"), name)
                    assert api.bucket_writes is False
                assert clients_way.counts[fault] == 2
            assert request_count(server, "/api/v1/blocks/put_done") == 0
            assert request_count(server, "/api/v1/blocks/upload") == 4
            clients_way.faults = check
            with ApiClient(server.url, token) as api:
                for name in names:
                    upload_file(api, tmp_path / name.strip("/"), name)
                assert api.bucket_writes is True
            assert request_count(server, "/api/v1/blocks/put_done") == 2
            with ApiClient(server.url, token) as api:
                for name, data in files.items():
                    download_file(api, name, tmp_path / "got.bin")
                    assert (tmp_path / "got.bin").read_bytes() == data, name


def test_kill_9_between_a_plan_and_its_adoption_loses_no_acknowledged_file(tmp_path: Path, s3_server: S3Server) -> None:
    """The server is killed (SIGKILL) while a client puts packs straight to the bucket: the
    upload under way is not acknowledged, and every file that was downloads byte-identical
    from the restarted server."""
    with fault_proxy(s3_server.endpoint, Faults(check_chunks=s3_server.secret)) as proxy:
        server = put_server(tmp_path, s3_server, proxy.endpoint).start()
        token = server.add_user("kim")
        acknowledged = kill_mid_upload(server, token, tmp_path, [60_000, 900_000, 2_500_000], seed=6, acknowledged_first=8)
        assert request_count(server, "/api/v1/blocks/put_done") >= 8
        with server:  # the same database and bucket, a new process
            for remote, digest in acknowledged.items():
                got = httpx.get(f"{server.url}/api/v1/content{remote}", headers={"Authorization": f"Bearer {token}"})
                assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == digest, remote


def test_a_client_that_sends_other_bytes_than_it_named_stores_nothing(tmp_path: Path, s3_server: S3Server) -> None:
    """The bucket refuses the PUT (a chunk's signature does not hold for its bytes), the
    server refuses to adopt a pack the bucket does not hold, and no chunk of it is readable."""
    rng = random.Random(2)
    chunks = dict(named(rng.randbytes(n)) for n in (300_000, 200_000, 9_000))
    liar = dict(chunks)
    last = list(chunks)[-1]
    liar[last] = bytes(len(chunks[last]))  # the same length, other bytes
    with (
        fault_proxy(s3_server.endpoint, Faults(check_chunks=s3_server.secret)) as proxy,
        put_server(tmp_path, s3_server, proxy.endpoint) as server,
    ):
        token = server.add_user("ann")
        with ApiClient(server.url, token) as api:
            ns = api.account()["root_ns"]
            answer = api._post("/api/v1/blocks/put_plan", {"ns_id": ns, "chunks": [[n, len(d)] for n, d in chunks.items()]})
            plan = parse_put_plan(answer, ns, liar)
            assert plan is not None
            with pytest.raises(BadPlan, match="403"):
                api._send_put(plan)
            assert proxy.counts["bad_chunk"] == 2  # the store's probe's, and this one
            done = httpx.post(f"{server.url}/api/v1/blocks/put_done", json=plan.done, headers={"Authorization": f"Bearer {token}"})
            assert done.status_code == 409 and done.json()["code"] == "pack_not_stored"
            for name in chunks:
                got = httpx.get(f"{server.url}/api/v1/blocks/{name}", headers={"Authorization": f"Bearer {token}"})
                assert got.status_code == 404
            # The same chunks, sent honestly, are stored.
            assert api._put_to_bucket(ns, chunks) == 3


def test_a_pack_is_adopted_only_with_the_ticket_of_its_plan(tmp_path: Path, s3_server: S3Server) -> None:
    """A ticket is bound to its caller, namespace, pack, chunks and expiry: changing any of
    them, or presenting it as someone else, is 403 and indexes nothing, even for a pack the
    bucket holds."""
    rng = random.Random(3)
    chunks = dict(named(rng.randbytes(n)) for n in (100_000, 50_000))
    with (
        fault_proxy(s3_server.endpoint, Faults(check_chunks=s3_server.secret)) as proxy,
        put_server(tmp_path, s3_server, proxy.endpoint) as server,
    ):
        ann, bob = server.add_user("ann"), server.add_user("bob")
        with ApiClient(server.url, ann) as api, ApiClient(server.url, bob) as other:
            ns = api.account()["root_ns"]
            answer = api._post("/api/v1/blocks/put_plan", {"ns_id": ns, "chunks": [[n, len(d)] for n, d in chunks.items()]})
            plan = parse_put_plan(answer, ns, chunks)
            assert plan is not None
            api._send_put(plan)  # the pack is in the bucket
            bob_ns = other.account()["root_ns"]
            first = next(iter(chunks))
            forged = [
                (bob, {**plan.done, "ns_id": bob_ns}),  # someone else, into their own namespace
                (ann, {**plan.done, "ticket": "0" * 64}),
                (ann, {**plan.done, "expires": plan.done["expires"] + 3600}),
                (ann, {**plan.done, "chunks": [[first, len(chunks[first])]]}),
            ]
            for token, body in forged:
                answer = httpx.post(f"{server.url}/api/v1/blocks/put_done", json=body, headers={"Authorization": f"Bearer {token}"})
                assert answer.status_code == 403 and answer.json()["code"] == "bad_ticket", body
            for name in chunks:
                assert httpx.get(f"{server.url}/api/v1/blocks/{name}", headers={"Authorization": f"Bearer {ann}"}).status_code == 404
            assert api._post("/api/v1/blocks/put_done", plan.done)["stored"] == 2
            for name, data in chunks.items():
                assert httpx.get(f"{server.url}/api/v1/blocks/{name}", headers={"Authorization": f"Bearer {ann}"}).content == data


MALFORMED: list[tuple[object, str]] = [
    ([["ab" * 32, 100]], "8192 to"),  # smaller than a signed body's chunk may be
    ([["ab" * 32, 5 * 1024 * 1024]], "8192 to"),  # larger than any chunk
    ([["ab" * 32, 10_000], ["ab" * 32, 10_000]], "twice"),
    ([["AB" * 32, 10_000]], "pairs"),  # not a chunk name
    ([["ab" * 32, 10_000, 1]], "pairs"),
    ([["ab" * 32, True]], "pairs"),
    ([[f"{i:064x}", 4 * 1024 * 1024] for i in range(17)], "at most"),  # more bytes than a pack holds
    ([], "pairs"),
    ("nope", "pairs"),
]


def test_a_malformed_plan_request_is_refused_before_anything_is_signed(tmp_path: Path, s3_server: S3Server) -> None:
    """Each is 400 with a message that says what is wrong; a namespace the caller may not
    write is 404, as for an upload."""
    with (
        fault_proxy(s3_server.endpoint, Faults(check_chunks=s3_server.secret)) as proxy,
        put_server(tmp_path, s3_server, proxy.endpoint) as server,
    ):
        token = server.add_user("ann")
        auth = {"Authorization": f"Bearer {token}"}
        for chunks, why in MALFORMED:
            answer = httpx.post(f"{server.url}/api/v1/blocks/put_plan", json={"ns_id": 1, "chunks": chunks}, headers=auth)
            assert answer.status_code == 400 and why in answer.json()["message"], chunks
            done = {"ns_id": 1, "pack": "0" * 34, "chunks": chunks, "expires": 0, "ticket": "0" * 64}
            answer = httpx.post(f"{server.url}/api/v1/blocks/put_done", json=done, headers=auth)
            assert answer.status_code == 400 and why in answer.json()["message"], chunks
        other = server.add_user("bob")
        with ApiClient(server.url, other) as api:
            bob_ns = api.account()["root_ns"]
        good = [["ab" * 32, 10_000]]
        answer = httpx.post(f"{server.url}/api/v1/blocks/put_plan", json={"ns_id": bob_ns, "chunks": good}, headers=auth)
        assert answer.status_code == 404


def test_a_bucket_that_checks_no_chunk_signature_gets_no_client_bytes(tmp_path: Path, s3_server: S3Server) -> None:
    """moto takes a chunk whose signature does not hold: the server hands out no PUTs there,
    and the client uploads through the blocks role, as without ``uploads=direct``."""
    if s3_server.kind != "moto":
        pytest.skip("only moto takes chunks whose signature does not hold")
    data = random.Random(4).randbytes(3_000_000)
    (tmp_path / "f.bin").write_bytes(data)
    with put_server(tmp_path, s3_server, s3_server.endpoint) as server:
        token = server.add_user("ann")
        with ApiClient(server.url, token) as api:
            upload_file(api, tmp_path / "f.bin", "/f.bin")
            assert api.bucket_writes is False
            download_file(api, "/f.bin", tmp_path / "got.bin")
        assert request_count(server, "/api/v1/blocks/upload") >= 1
        assert request_count(server, "/api/v1/blocks/put_done") == 0
    assert (tmp_path / "got.bin").read_bytes() == data


def test_a_client_asks_for_no_pack_where_the_server_offers_none(tmp_path: Path, s3_server: S3Server) -> None:
    """Without ``uploads=direct`` the prove answers say so (``direct_puts``), and an upload
    costs no request more than it did: no ``put_plan``."""
    data = random.Random(7).randbytes(3_000_000)
    (tmp_path / "f.bin").write_bytes(data)
    url = s3_server.url(fresh_prefix())
    with LiveServer(tmp_path / "srv", extra_args=["--blocks", url], env=s3_server.credentials) as server:
        token = server.add_user("ann")
        with ApiClient(server.url, token) as api:
            upload_file(api, tmp_path / "f.bin", "/f.bin")
            assert api.bucket_writes is False
            download_file(api, "/f.bin", tmp_path / "got.bin")
        assert request_count(server, "/api/v1/blocks/put_plan") == 0
        assert request_count(server, "/api/v1/blocks/upload") >= 1
    assert (tmp_path / "got.bin").read_bytes() == data
