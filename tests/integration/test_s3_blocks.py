"""cubby servers with their packs on S3 (moto's server process; Ceph RGW too under
CUBBY_TEST_CEPH=1), through real HTTP on loopback: two blocks processes on one bucket serve
each other's uploads, and a kill -9 mid-upload loses no acknowledged file."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from cubby.client import download
from cubby.client.api import ApiClient
from cubby.client.download import download_file
from cubby.client.upload import upload_file
from cubby.core import proofs
from cubby.errors import NotFound
from cubby.server.blocks import FETCHES_FROM_DISK, FETCHES_FROM_OBJECTS
from cubby.server.possession import REMOTE_FIRST
from tests.helpers.fault_proxy import Faults, decoded_body, fault_proxy
from tests.helpers.kill_mid_upload import kill_mid_upload
from tests.helpers.live_server import LiveServer
from tests.helpers.s3_servers import S3Server, fresh_prefix

pytestmark = pytest.mark.xdist_group("s3")


def s3_server_process(
    tmp_path: Path, name: str, s3: S3Server, prefix: str, db: str, endpoint: str | None = None
) -> LiveServer:
    """A whole cubby server (meta and blocks) with a data folder of its own, its packs under
    ``prefix`` in the bucket (reached through ``endpoint``, by default the S3 server's own) and
    its metadata (the chunk index with it) in ``db``."""
    url = s3.url(prefix, endpoint=endpoint)
    return LiveServer(tmp_path / name, db_url=db, extra_args=["--blocks", url], env=s3.credentials)


def content(url: str, token: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(
        f"{url}/api/v1/content/{path.lstrip('/')}",
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
        timeout=60,
    )


def uploads_read_back(server: LiveServer, token: str, files: dict[str, bytes], tmp_path: Path) -> None:
    """Upload ``files`` (remote path -> bytes) through ``server``'s API, then read each back
    through real HTTP, whole and by range (1000 bytes from offset 1000), byte-identical."""
    with ApiClient(server.url, token) as api:
        for remote, data in files.items():
            (tmp_path / remote.strip("/")).write_bytes(data)
            upload_file(api, tmp_path / remote.strip("/"), remote)
    for remote, data in files.items():
        got = content(server.url, token, remote)
        assert got.status_code == 200 and got.content == data, remote
        part = content(server.url, token, remote, {"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == data[1000:2000]


def test_two_blocks_processes_on_one_bucket_serve_each_others_uploads(
    tmp_path: Path, s3_server: S3Server
) -> None:
    prefix, db = fresh_prefix(), f"sqlite:///{tmp_path / 'meta.db'}"
    rng = random.Random(11)
    files = {"/big.bin": rng.randbytes(5_000_000), "/small.txt": b"hello, packs\n" * 100, "/empty": b""}
    for remote, data in files.items():
        (tmp_path / remote.strip("/")).write_bytes(data)
    with (
        s3_server_process(tmp_path, "a", s3_server, prefix, db) as a,
        s3_server_process(tmp_path, "b", s3_server, prefix, db) as b,
    ):
        token = a.add_user("ann")
        with ApiClient(a.url, token) as api:
            for remote in files:
                upload_file(api, tmp_path / remote.strip("/"), remote)
        for remote, data in files.items():
            whole = content(b.url, token, remote)
            assert whole.status_code == 200 and whole.content == data
        big = files["/big.bin"]
        for first, last in [(0, 0), (1_000_000, 3_999_999), (4_999_000, 4_999_999)]:
            part = content(b.url, token, "/big.bin", {"Range": f"bytes={first}-{last}"})
            assert part.status_code == 206 and part.content == big[first : last + 1]
        tail = content(b.url, token, "/big.bin", {"Range": "bytes=-1234"})
        assert tail.status_code == 206 and tail.content == big[-1234:]
        # and the other way round: b stores, a serves
        (tmp_path / "from-b").write_bytes(rng.randbytes(700_000))
        with ApiClient(b.url, token) as api:
            upload_file(api, tmp_path / "from-b", "/from-b")
        assert content(a.url, token, "/from-b").content == (tmp_path / "from-b").read_bytes()
    # the chunks are in packs in the bucket, not in either server's data folder
    objects = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix + "/")  # type: ignore[attr-defined]
    assert objects.get("KeyCount", 0) >= 1
    assert len(objects["Contents"]) < 20  # packs, not one object per chunk


def test_kill_9_mid_upload_loses_no_acknowledged_file(tmp_path: Path, s3_server: S3Server) -> None:
    prefix, db = fresh_prefix(), f"sqlite:///{tmp_path / 'meta.db'}"
    server = s3_server_process(tmp_path, "srv", s3_server, prefix, db).start()
    token = server.add_user("kim")
    acknowledged = kill_mid_upload(server, token, tmp_path, [3_000, 60_000, 900_000], seed=5, acknowledged_first=12)
    with server:  # the same database and bucket, a new process
        for remote, digest in acknowledged.items():
            got = content(server.url, token, remote)
            assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == digest, remote


def test_gc_with_blocks_on_s3_reclaims_dead_packs_and_keeps_live_files(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """`cubby gc --blocks s3://…` deletes a pack whose chunks no file references (chunks
    uploaded and never committed), and leaves the files that are there readable."""
    prefix, db = fresh_prefix(), f"sqlite:///{tmp_path / 'meta.db'}"
    rng = random.Random(3)
    live = rng.randbytes(2_000_000)
    orphans = [rng.randbytes(1_000_000) for _ in range(3)]
    server = s3_server_process(tmp_path, "srv", s3_server, prefix, db)
    with server:
        token = server.add_user("gus")
        with ApiClient(server.url, token) as api:
            (tmp_path / "live.bin").write_bytes(live)
            upload_file(api, tmp_path / "live.bin", "/live.bin")
            api.upload_chunks(api.account()["root_ns"], [(hashlib.sha256(d).hexdigest(), d) for d in orphans])
    client = s3_server.client()

    def stored() -> int:
        listing = client.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix + "/")  # type: ignore[attr-defined]
        return sum(item["Size"] for item in listing.get("Contents", ()))

    before = stored()
    gc = [sys.executable, "-m", "cubby", "--json", "gc", "--db", db, "--blocks", s3_server.url(prefix)]
    for _ in range(2):  # the first run retires the emptied pack, the second deletes it
        subprocess.run(
            [*gc, "--grace", "0", "--pack-grace", "0", "--threshold", "0.1"],
            check=True,
            env={**os.environ, **s3_server.credentials},
            capture_output=True,
        )
    assert before > 4_900_000 and stored() < before - 2_900_000  # the orphans' pack left the bucket
    with server:
        got = content(server.url, token, "/live.bin")
        assert got.status_code == 200 and got.content == live


def test_a_server_on_a_store_that_checks_chunk_signatures_signs_its_packs_in_chunks(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """Behind a proxy that checks each chunk's signature of a body signed in chunks (as Ceph RGW
    does; moto does not) and ignores CRC32 (as RGW 16 and moto do), the server's default check
    is the chunked one: a file of random bytes (raw chunks, whose verifying hashers sign the
    pack) and one of text (compressed chunks, hashed afresh) go up through real HTTP, every
    pack PUT is signed in chunks and passes the proxy's check, and both files read back
    byte-identical, whole and by range."""
    prefix, db = fresh_prefix(), f"sqlite:///{tmp_path / 'meta.db'}"
    secret = s3_server.secret
    rng = random.Random(5)
    files = {
        "/random.bin": rng.randbytes(6_000_000),
        "/text.txt": b"".join(b"line %d of a text that compresses well\n" % i for i in range(120_000)),
    }
    with (
        fault_proxy(s3_server.endpoint, Faults(check_chunks=secret), record_puts=True) as proxy,
        s3_server_process(tmp_path, "srv", s3_server, prefix, db, endpoint=proxy.endpoint) as server,
    ):
        uploads_read_back(server, server.add_user("cyd"), files, tmp_path)
    packs = [(headers, body) for headers, body in proxy.puts if b"CUBBYPK1" in body[:200]]
    assert len(packs) >= 2 and proxy.counts["bad_chunk"] == 1  # the start's probe of a wrong signature
    assert all(headers["x-amz-content-sha256"] == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" for headers, _ in packs)
    assert all(decoded_body(headers, body).startswith(b"CUBBYPK1") for headers, body in packs)


def test_a_server_rides_out_s3_slowdowns_and_cut_connections(tmp_path: Path, s3_server: S3Server) -> None:
    """The server's S3 traffic goes through a proxy that answers 503 SlowDown or cuts PUTs and
    GETs halfway for a share of requests: uploads and downloads still succeed, byte-identical."""
    prefix, db = fresh_prefix(), f"sqlite:///{tmp_path / 'meta.db'}"
    rng = random.Random(8)
    files = {f"/f{i}.bin": rng.randbytes(rng.choice([5_000, 400_000, 3_000_000])) for i in range(8)}
    faults = Faults(slowdown=0.2, cut_put=0.2, cut_get=0.2, seed=4)
    with (
        fault_proxy(s3_server.endpoint, faults) as proxy,
        s3_server_process(tmp_path, "srv", s3_server, prefix, db, endpoint=proxy.endpoint) as server,
    ):
        uploads_read_back(server, server.add_user("fay"), files, tmp_path)
    assert proxy.counts["slowdown"] and proxy.counts["cut_put"] and proxy.counts["cut_get"]


def test_a_silent_s3_server_gets_clear_503s_and_loses_nothing(tmp_path: Path, s3_server: S3Server) -> None:
    """The S3 server takes requests and never answers (the proxy holds them, as Ceph RGW does
    with its OSD down): `cubby put` ends with the server's 503 ``object_store_error`` (exit 3,
    retryable), not a timeout of its own, and the message names neither bucket nor endpoint,
    which go to the server's log; the file is not there. Once S3 answers again the same put
    succeeds, and both files read back byte-identical. A download in such an outage is a 503
    too (`cubby get` exits 3 and writes nothing), and works once S3 answers."""
    prefix, db = fresh_prefix(), f"sqlite:///{tmp_path / 'meta.db'}"
    rng = random.Random(12)
    files = {"first.bin": rng.randbytes(300_000), "second.bin": rng.randbytes(200_000)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with fault_proxy(s3_server.endpoint, Faults()) as proxy:
        url = s3_server.url(prefix, endpoint=proxy.endpoint) + "&timeout=1"
        with LiveServer(tmp_path / "srv", db_url=db, extra_args=["--blocks", url], env=s3_server.credentials) as server:
            token = server.add_user("sam")
            env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}

            def put(name: str) -> subprocess.CompletedProcess[str]:
                args = [sys.executable, "-m", "cubby", "--json", "put", str(tmp_path / name), f"/{name}"]
                return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)

            assert put("first.bin").returncode == 0
            proxy.faults = Faults(stall=1.0)
            failed = put("second.bin")
            assert failed.returncode == 3, failed.stderr
            error = json.loads(failed.stderr.strip().splitlines()[-1])["error"]
            assert error["code"] == "object_store_error" and "block storage" in error["message"]
            assert s3_server.bucket not in failed.stderr and str(proxy.port) not in failed.stderr
            assert 1 <= proxy.counts["stall"] <= 2  # a PUT given up at its deadline (eight attempts without one)
            assert "block store failed" in server.logs() and "gave up after" in server.logs()
            with ApiClient(server.url, token) as api, pytest.raises(NotFound):
                api.stat("/second.bin")
            proxy.faults = Faults()
            assert put("second.bin").returncode == 0
            for name, data in files.items():
                got = content(server.url, token, f"/{name}")
                assert got.status_code == 200 and got.content == data, name
            # Downloads: a read that fails before the first byte is the answer's error (503),
            # not a 200 cut short. (A restart first, so no read-ahead window holds the bytes.)
            server.restart()
            proxy.faults = Faults(stall=1.0)
            got = content(server.url, token, "/first.bin")
            assert got.status_code == 503 and got.json()["code"] == "object_store_error" and got.headers["Retry-After"]
            failed = subprocess.run(
                [sys.executable, "-m", "cubby", "--json", "get", "/first.bin", str(tmp_path / "got.bin")],
                env=env, capture_output=True, text=True, timeout=300,
            )
            assert failed.returncode == 3 and json.loads(failed.stderr.strip().splitlines()[-1])["error"]["code"] == "object_store_error"
            assert not (tmp_path / "got.bin").exists()
            proxy.faults = Faults()
            got = content(server.url, token, "/first.bin")
            assert got.status_code == 200 and got.content == files["first.bin"]


def test_a_bucket_that_is_not_there_stops_the_start_and_later_is_a_clear_refusal(tmp_path: Path, s3_server: S3Server) -> None:
    """A set-up fault that will not pass by itself (the bucket does not exist). At start,
    `cubby serve` does not serve: it exits 2 (retrying will not mend it) with one line that
    names the store, the S3 server's reason and what to check. A bucket deleted under a running
    server: the put is refused with ``object_store_error`` and a message that says to tell the
    operator, without naming the bucket (the server's log does), and nothing is committed."""
    bucket = f"cubby-missing-{fresh_prefix()}".lower()[:60]
    url = f"s3://{bucket}/p?endpoint={s3_server.endpoint}&region=us-east-1"
    env = {**os.environ, **s3_server.credentials}
    start = subprocess.run(
        [sys.executable, "-m", "cubby", "serve", "--data", str(tmp_path / "first"), "--port", "0", "--blocks", url],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert start.returncode == 2 and "is serving" not in start.stderr
    line = start.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: the block store {url} cannot be written") and "NoSuchBucket" in line
    assert line.endswith("[blocks_unusable]") and "credentials" in line
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    (tmp_path / "f.txt").write_text("hello")
    with LiveServer(tmp_path / "srv", extra_args=["--blocks", url], env=s3_server.credentials) as server:
        token = server.add_user("ned")
        s3.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]  # empty: the start's probes are gone
        env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
        failed = subprocess.run(
            [sys.executable, "-m", "cubby", "--json", "put", str(tmp_path / "f.txt"), "/f.txt"],
            env=env, capture_output=True, text=True, timeout=300,
        )
        error = json.loads(failed.stderr.strip().splitlines()[-1])["error"]
        # Exit status 2, not 3: retrying will not mend a missing bucket.
        assert failed.returncode == 2 and error["code"] == "object_store_error"
        assert "operator" in error["message"] and bucket not in failed.stderr
        assert bucket in server.logs()
        with ApiClient(server.url, token) as api, pytest.raises(NotFound):
            api.stat("/f.txt")


def test_a_wrong_proof_of_one_small_chunk_on_s3_waits_out_a_ranged_get_whether_held_or_not(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """On object storage reading one held chunk is a ranged GET (8 ms on moto), which a
    per-claim budget of 0.15 ms did not cover: a wrong proof of another user's 4 KiB chunk
    answered later than one of an absent chunk. Both now wait at least the store's fixed
    budget (`REMOTE_FIRST`), so neither answers before a held read could have."""
    prefix, db = fresh_prefix(), f"sqlite:///{tmp_path / 'meta.db'}"
    data = os.urandom(4096)
    held = hashlib.sha256(data).hexdigest()
    (tmp_path / "small.bin").write_bytes(data)
    with s3_server_process(tmp_path, "srv", s3_server, prefix, db) as server:
        ann, bob = server.add_user("ann"), server.add_user("bob")
        with ApiClient(server.url, ann) as api:
            upload_file(api, tmp_path / "small.bin", "/small.bin")
        with ApiClient(server.url, bob) as api:
            ns = api.account()["root_ns"]
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {bob}"}, timeout=60) as http:
            for name in (held, hashlib.sha256(b"nobody stored this").hexdigest()):
                body = {"ns_id": ns, "alg": proofs.CURRENT, "proofs": {name: {"size": 4096, "proof": "ab" * 32}}}
                answer = http.post("/api/v1/blocks/prove", json=body)
                assert answer.status_code == 200 and answer.json() == {"accepted": [], "rejected": [name]}
                assert answer.elapsed.total_seconds() >= REMOTE_FIRST


class InFlight(ApiClient):
    """Counts the chunk fetches under way at once (each from its first request to its last
    chunk), the most of them, and the blocks role's advice as the download saw it."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.lock = threading.Lock()
        self.now = self.most = 0

    def fetch_chunks(self, hashes):  # type: ignore[no-untyped-def]
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            yield from super().fetch_chunks(hashes)
        finally:
            with self.lock:
                self.now -= 1


def test_a_download_keeps_as_many_windows_in_flight_as_the_blocks_role_advises(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where chunks come from object storage, each window waits for ranged GETs, and the
    blocks role advises four windows in flight (`FETCHES_FROM_OBJECTS`); from a local folder
    two (`FETCHES_FROM_DISK`), and a download keeps to it. The file arrives whole either way."""
    monkeypatch.setattr(download, "DOWNLOAD_WINDOW", 256 * 1024)  # a window per chunk or so
    data = random.Random(11).randbytes(12_000_000)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    on_s3 = s3_server_process(tmp_path, "s3", s3_server, fresh_prefix(), f"sqlite:///{tmp_path / 'meta.db'}")
    on_disk = LiveServer(tmp_path / "disk")
    for server, advice in ((on_s3, FETCHES_FROM_OBJECTS), (on_disk, FETCHES_FROM_DISK)):
        with server:
            token = server.add_user("ivy")
            with ApiClient(server.url, token) as api:
                upload_file(api, src, "/big.bin")
                assert len(api.blocklist("/big.bin")[1]) >= 8
            with InFlight(server.url, token) as api:
                download_file(api, "/big.bin", tmp_path / f"got-{advice}.bin")
                assert api.fetch_advice == advice
                # at most the advice; and from object storage more than the two of before
                assert api.most <= advice and (advice == 2 or api.most > 2), (advice, api.most)
            assert (tmp_path / f"got-{advice}.bin").read_bytes() == data
