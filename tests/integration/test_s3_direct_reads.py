"""Downloads straight from the bucket (``--blocks s3://…&downloads=direct``), through real HTTP
on loopback: a cubby server on moto (and on Ceph RGW under CUBBY_TEST_CEPH=1) hands out signed
reads, the client's GETs go to the bucket through a proxy that checks their signatures as S3
does, and what the client may read, and what happens when the bucket fails it, is what
`cubby.blockstore.direct` and `cubby.client.bucketreads` say."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest

from cubby.client.api import ApiClient
from cubby.client.download import download_file, download_tree
from cubby.client.sync.engine import SyncEngine
from cubby.client.upload import upload_file
from cubby.core.hashing import sha256_hex
from cubby.errors import NotFound
from cubby.server.blocks import FETCHES_FROM_OBJECTS
from tests.helpers.fault_proxy import Faults, fault_proxy
from tests.helpers.live_server import LiveServer, listening_socket
from tests.helpers.s3_servers import S3Server, fresh_prefix

pytestmark = pytest.mark.xdist_group("s3")


def direct_server(tmp_path: Path, s3: S3Server, public: str, name: str = "srv") -> LiveServer:
    """A whole cubby server with its packs on ``s3`` and ``downloads=direct``, naming ``public``
    as the endpoint clients reach the bucket at."""
    url = s3.url(fresh_prefix()) + f"&downloads=direct&public_endpoint={public}"
    return LiveServer(tmp_path / name, extra_args=["--blocks", url], env=s3.credentials)


def upload(api: ApiClient, tmp_path: Path, files: dict[str, bytes]) -> None:
    for remote, data in files.items():
        local = tmp_path / "up" / remote.strip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        upload_file(api, local, remote)


def text(rng: random.Random, words: int) -> bytes:
    """Words drawn from a vocabulary of 4,096: text that zstd stores at about half its size."""
    vocabulary = [rng.randbytes(4).hex().encode() for _ in range(4096)]
    return b" ".join(rng.choices(vocabulary, k=words))


def some_files(seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        "/d/random.bin": rng.randbytes(6_000_000),  # raw chunks, several per read
        "/d/text.txt": text(rng, 900_000),  # zstd, stored at about half its size
        "/d/small.txt": b"a small file\n",
        "/d/empty": b"",
    }


def fetches(server: LiveServer) -> int:
    """How many chunk fetches reached the blocks role (its access log, once settled: a
    request's line is written after its answer, and could land after the test had counted)."""
    return server.settled_logs().count("/api/v1/blocks/fetch")


def test_direct_downloads_come_from_the_bucket_byte_identical(tmp_path: Path, s3_server: S3Server) -> None:
    """Large files' chunks (raw and compressed) come from the bucket and none through the
    server, over `DirectHttp` and through httpx (as over https, or a proxy); a tree's small
    files (reads too small to be worth a GET, `MIN_READ`) through the server; every file
    byte-identical."""
    files = some_files(1)
    with (
        fault_proxy(s3_server.endpoint, Faults(check_query=s3_server.secret)) as proxy,
        direct_server(tmp_path, s3_server, proxy.endpoint) as server,
    ):
        token = server.add_user("ann")
        with ApiClient(server.url, token) as api:
            upload(api, tmp_path, files)
        before = fetches(server)
        with ApiClient(server.url, token) as api:
            got = download_file(api, "/d/random.bin", tmp_path / "one.bin")
            assert api.bucket_reads is True
        assert fetches(server) == before  # no chunk went through the server
        with ApiClient(server.url, token, transport=httpx.HTTPTransport()) as api:
            download_file(api, "/d/text.txt", tmp_path / "text.txt")
            assert api.bucket_reads is True
        assert fetches(server) == before
        assert proxy.requests["GET"] >= 2 and proxy.counts["bad_query"] == 0  # a read or more per file
        assert got.bytes_received == len(files["/d/random.bin"])
        assert (tmp_path / "one.bin").read_bytes() == files["/d/random.bin"]
        assert (tmp_path / "text.txt").read_bytes() == files["/d/text.txt"]
        with ApiClient(server.url, token) as api:
            results = download_tree(api, "/d", tmp_path / "tree")
        assert {r.path for r in results} == set(files)
        for remote, data in files.items():
            assert (tmp_path / "tree" / remote.removeprefix("/d/")).read_bytes() == data, remote


def read_plan(url: str, token: str, hashes: list[str]) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/blocks/locate", json={"hashes": hashes}, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def test_a_signed_read_covers_the_chunks_asked_for_and_no_other_byte(tmp_path: Path, s3_server: S3Server) -> None:
    """A read of one chunk in the middle of a pack is that chunk's bytes: widened by one byte
    either way, or with no Range at all, the bucket refuses it (Ceph RGW itself; the proxy
    in front of moto, which checks nothing); another user gets no read of the chunk at all."""
    data = random.Random(2).randbytes(5_000_000)
    real = s3_server.kind == "ceph"
    with (
        fault_proxy(s3_server.endpoint, Faults(check_query=None if real else s3_server.secret)) as proxy,
        direct_server(tmp_path, s3_server, proxy.endpoint) as server,
    ):
        ann, bob = server.add_user("ann"), server.add_user("bob")
        with ApiClient(server.url, ann) as api:
            upload(api, tmp_path, {"/a.bin": data})
            _, chunks = api.blocklist("/a.bin")
        assert len(chunks) >= 3
        middle = chunks[1]
        plan = read_plan(server.url, ann, [middle.hash]).json()
        assert plan["direct"] is True and plan["fetch"] == [] and len(plan["reads"]) == 1
        assert plan["fetches"] == FETCHES_FROM_OBJECTS  # windows in flight: reads wait for GETs
        (read,) = plan["reads"]
        assert read["chunks"] == [[middle.hash, middle.size + 1, middle.size]]  # raw: a codec byte and the chunk
        first, last = (int(x) for x in read["headers"]["Range"].removeprefix("bytes=").split("-"))
        assert last - first + 1 == middle.size + 1
        got = httpx.get(read["url"], headers=read["headers"], timeout=30)
        assert got.status_code == 206 and sha256_hex(got.content[1:]) == middle.hash
        for wider in (f"bytes={first - 1}-{last}", f"bytes={first}-{last + 1}", f"bytes=0-{last}"):
            assert httpx.get(read["url"], headers={"Range": wider}, timeout=30).status_code == 403
        assert httpx.get(read["url"], timeout=30).status_code == 403
        assert proxy.counts["bad_query"] == (0 if real else 4)
        # chunks asked for side by side share a read; one left out splits it
        both = read_plan(server.url, ann, [chunks[0].hash, chunks[1].hash]).json()
        assert [len(r["chunks"]) for r in both["reads"]] == [2]
        apart = read_plan(server.url, ann, [chunks[0].hash, chunks[2].hash]).json()
        assert [len(r["chunks"]) for r in apart["reads"]] == [1, 1]
        # bob may not read ann's chunks: no read, the same 404 as a fetch
        refused = read_plan(server.url, bob, [middle.hash])
        assert refused.status_code == 404 and "url" not in refused.text and "X-Amz" not in refused.text


def test_a_bucket_the_client_cannot_reach_costs_a_fallback_not_the_download(tmp_path: Path, s3_server: S3Server) -> None:
    """The public endpoint refuses connections (a bucket reachable by the server only): the
    download still completes, byte-identical, through the blocks role, and after
    `BUCKET_FAILURES` failed reads the client stops trying the bucket."""
    rng = random.Random(3)
    files = {**some_files(3), **{f"/d/r{i}.bin": rng.randbytes(2_000_000) for i in range(3)}}
    closed = listening_socket()
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    with direct_server(tmp_path, s3_server, f"http://127.0.0.1:{port}") as server:
        token = server.add_user("cat")
        with ApiClient(server.url, token) as api:
            upload(api, tmp_path, files)
        with ApiClient(server.url, token) as api:
            download_tree(api, "/d", tmp_path / "tree")
            assert api.bucket_reads is False
        for remote, data in files.items():
            assert (tmp_path / "tree" / remote.removeprefix("/d/")).read_bytes() == data, remote
        assert fetches(server) >= 1


@pytest.mark.parametrize("faults", [Faults(cut_get=0.5, seed=3), Faults(slowdown=0.5, seed=5)], ids=["cut", "503"])
def test_direct_reads_the_bucket_fails_are_fetched_through_the_server(
    tmp_path: Path, s3_server: S3Server, faults: Faults
) -> None:
    """Half the bucket's answers cut halfway, or 503: every chunk of a failed read comes from
    the blocks role instead, and every file is byte-identical."""
    files = {f"/d/f{i}.bin": random.Random(i).randbytes(1_500_000) for i in range(6)}
    with (
        fault_proxy(s3_server.endpoint, Faults(check_query=s3_server.secret)) as proxy,
        direct_server(tmp_path, s3_server, proxy.endpoint) as server,
    ):
        token = server.add_user("dan")
        with ApiClient(server.url, token) as api:
            upload(api, tmp_path, files)
        proxy.faults = faults
        with ApiClient(server.url, token) as api:
            for remote in files:
                download_file(api, remote, tmp_path / remote.removeprefix("/d/"))
        for remote, data in files.items():
            assert (tmp_path / remote.removeprefix("/d/")).read_bytes() == data, remote
    assert proxy.counts["cut_get"] + proxy.counts["slowdown"] >= 1
    assert fetches(server) >= 1


def test_reads_that_expired_before_use_are_fetched_through_the_server(tmp_path: Path, s3_server: S3Server) -> None:
    """Every signed read comes to the bucket after it expired (the bucket's clock 400 s ahead,
    past `SIGNED_READ_SECONDS`): the bucket refuses each, and the files still download
    byte-identical through the blocks role."""
    files = {f"/d/f{i}.bin": random.Random(10 + i).randbytes(1_000_000) for i in range(3)}
    with (
        fault_proxy(s3_server.endpoint, Faults(check_query=s3_server.secret, query_clock=400)) as proxy,
        direct_server(tmp_path, s3_server, proxy.endpoint) as server,
    ):
        token = server.add_user("fin")
        with ApiClient(server.url, token) as api:
            upload(api, tmp_path, files)
            for remote in files:
                download_file(api, remote, tmp_path / remote.removeprefix("/d/"))
            assert api.bucket_reads is False  # two refusals in a row: it stopped asking the bucket
        for remote, data in files.items():
            assert (tmp_path / remote.removeprefix("/d/")).read_bytes() == data, remote
    assert proxy.counts["bad_query"] == 2 and fetches(server) == 3


def test_a_sync_client_downloads_from_the_bucket(tmp_path: Path, s3_server: S3Server) -> None:
    """`cubby sync`'s engine takes its downloads through the same `fetch_chunks`: a second
    client of the user gets the first one's tree byte-identical, its large files' chunks from
    the bucket."""
    rng = random.Random(6)
    tree = {"big.bin": rng.randbytes(3_000_000), "docs/text.txt": text(rng, 400_000), "docs/small.txt": b"small\n"}
    with (
        fault_proxy(s3_server.endpoint, Faults(check_query=s3_server.secret)) as proxy,
        direct_server(tmp_path, s3_server, proxy.endpoint) as server,
    ):
        token = server.add_user("gus")
        for rel, data in tree.items():
            (tmp_path / "a" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "a" / rel).write_bytes(data)
        (tmp_path / "b").mkdir()
        a = SyncEngine(tmp_path / "a", ApiClient(server.url, token), host="a")
        b = SyncEngine(tmp_path / "b", ApiClient(server.url, token), host="b")
        try:
            assert a.run_once().converged
            before = proxy.requests["GET"]
            assert b.run_once().converged
            assert b.api.bucket_reads is True and proxy.requests["GET"] > before
        finally:
            for engine in (a, b):
                engine.close()
                engine.api.close()
        for rel, data in tree.items():
            assert (tmp_path / "b" / rel).read_bytes() == data, rel


def test_a_server_with_proxied_downloads_hands_out_no_reads(tmp_path: Path, s3_server: S3Server) -> None:
    """The default (``downloads=proxied``): locate says so, the client fetches every chunk
    through the blocks role, and the bucket sees no presigned GET."""
    data = random.Random(4).randbytes(2_000_000)
    with (
        fault_proxy(s3_server.endpoint, Faults()) as proxy,
        LiveServer(tmp_path / "srv", extra_args=["--blocks", s3_server.url(fresh_prefix(), endpoint=proxy.endpoint)], env=s3_server.credentials) as server,
    ):
        token = server.add_user("eve")
        with ApiClient(server.url, token) as api:
            upload(api, tmp_path, {"/p.bin": data})
            _, chunks = api.blocklist("/p.bin")
            assert read_plan(server.url, token, [chunks[0].hash]).json() == {"direct": False, "fetches": FETCHES_FROM_OBJECTS}
            download_file(api, "/p.bin", tmp_path / "p.bin")
            assert api.bucket_reads is False
        assert (tmp_path / "p.bin").read_bytes() == data
        assert fetches(server) >= 1


def test_a_chunk_the_caller_may_not_read_is_refused_and_leaves_direct_reads_on(tmp_path: Path, s3_server: S3Server) -> None:
    """A first locate answered 404 for a chunk the caller may not read (another user's, or a
    file unshared since it was listed) is that chunk's refusal, which the fetch then says; it
    is not a server without the route, and the client's next download still comes from the
    bucket (a sync daemon's first 404 had turned direct reads off for its whole life)."""
    rng = random.Random(5)
    theirs, mine = rng.randbytes(2_000_000), rng.randbytes(6_000_000)
    with direct_server(tmp_path, s3_server, s3_server.endpoint) as server:
        ann, bob = server.add_user("ann"), server.add_user("bob")
        with ApiClient(server.url, ann) as api:
            upload(api, tmp_path / "ann", {"/theirs.bin": theirs})
            _, chunks = api.blocklist("/theirs.bin")
        with ApiClient(server.url, bob) as api:
            upload(api, tmp_path / "bob", {"/mine.bin": mine})
        before = fetches(server)
        with ApiClient(server.url, bob) as api:
            with pytest.raises(NotFound):
                dict(api.fetch_chunks([chunks[0].hash]))
            assert api.bucket_reads is None  # not known yet: the 404 was the chunk's
            refused = fetches(server)
            assert refused > before  # the fetch that said so
            download_file(api, "/mine.bin", tmp_path / "mine.bin")
            assert api.bucket_reads is True
        assert (tmp_path / "mine.bin").read_bytes() == mine
        assert fetches(server) == refused  # bob's chunks came from the bucket
