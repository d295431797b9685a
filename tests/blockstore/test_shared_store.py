"""Many blocks processes, one store (issue 11.3): two servers with their own data folders share
one metadata database and one blocks folder; whatever one stored, the other serves, through
real HTTP on loopback, whole and by Range, byte-identical."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

import httpx

from cubby.client.api import ApiClient
from cubby.client.download import download_file
from cubby.client.upload import upload_file
from tests.helpers.live_server import LiveServer


@contextlib.contextmanager
def two_servers(tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two servers with data folders of their own, on one database and one blocks folder."""
    db = f"sqlite:///{tmp_path / 'shared-meta.db'}"
    shared = ["--blocks", str(tmp_path / "shared-blocks")]
    with LiveServer(tmp_path / "a", db_url=db, extra_args=shared) as a, LiveServer(
        tmp_path / "b", db_url=db, extra_args=shared
    ) as b:
        yield a, b


def found_unreadable(server: LiveServer) -> float:
    """``cubby_chunks_found_unreadable`` on ``server``'s /metrics."""
    for line in httpx.get(server.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("cubby_chunks_found_unreadable "):
            return float(line.split()[1])
    raise AssertionError("no cubby_chunks_found_unreadable in /metrics")


def test_two_servers_on_one_folder_and_one_database_serve_each_others_uploads(tmp_path: Path) -> None:
    rng = random.Random(11)
    payload = rng.randbytes(3_000_000) + b"text " * 200_000
    (tmp_path / "f.bin").write_bytes(payload)
    with two_servers(tmp_path) as (a, b):
        token = a.add_user("dana")
        auth = {"Authorization": f"Bearer {token}"}
        with ApiClient(a.url, token) as api:
            upload_file(api, tmp_path / "f.bin", "/f.bin")
        # Downloaded whole and by ranges through the other process.
        r = httpx.get(b.url + "/api/v1/content/f.bin", headers=auth, timeout=60)
        assert r.status_code == 200 and r.content == payload
        for first, last in [(0, 0), (1_000_000, 2_500_000), (len(payload) - 10, len(payload) - 1)]:
            r = httpx.get(b.url + "/api/v1/content/f.bin", headers={**auth, "Range": f"bytes={first}-{last}"})
            assert r.status_code == 206 and r.content == payload[first : last + 1]
        r = httpx.get(b.url + "/api/v1/content/f.bin", headers={**auth, "Range": "bytes=-5000"})
        assert r.status_code == 206 and r.content == payload[-5000:]
        with ApiClient(b.url, token) as api:
            download_file(api, "/f.bin", tmp_path / "via-b.bin")
            # The same bytes uploaded through the other process deduplicate against the first's
            # chunks (its proofs are checked against chunks the first stored).
            (tmp_path / "g.bin").write_bytes(payload[:2_000_000] + b"new tail")
            upload_file(api, tmp_path / "g.bin", "/g.bin")
        assert (tmp_path / "via-b.bin").read_bytes() == payload
        with ApiClient(a.url, token) as api:
            download_file(api, "/g.bin", tmp_path / "g-via-a.bin")
        assert (tmp_path / "g-via-a.bin").read_bytes() == payload[:2_000_000] + b"new tail"
    # One store: both servers' packs are in the shared folder, none in their own data folders.
    assert list((tmp_path / "shared-blocks" / "packs").rglob("*.pack"))
    assert not (tmp_path / "a" / "blocks").exists() and not (tmp_path / "b" / "blocks").exists()


def test_a_chunk_one_server_could_not_read_is_mended_by_an_upload_through_the_other(tmp_path: Path) -> None:
    """Two servers on one store, and a load balancer that sends a client's prove to one and
    its upload to the other: a small file whose pack was lost is put again under a new name.
    The first server cannot read its chunk to check the proof, refuses it and records the
    chunk as unreadable on the shared index; the second, which never read it, stores the
    uploaded bytes again. Both then serve the old file and the copy, byte-identical."""
    data = random.Random(12).randbytes(50_000)
    (tmp_path / "f.bin").write_bytes(data)
    with two_servers(tmp_path) as (a, b):
        token = a.add_user("erin")
        auth = {"Authorization": f"Bearer {token}"}
        with ApiClient(a.url, token) as api:
            upload_file(api, tmp_path / "f.bin", "/f.bin")
        (pack,) = (tmp_path / "shared-blocks" / "packs").rglob("*.pack")
        pack.unlink()
        r = httpx.get(a.url + "/api/v1/content/f.bin", headers=auth, timeout=60)
        assert r.status_code >= 500 or r.content != data  # lost, before the mend (the second never read it)
        assert found_unreadable(b) == 1  # the first's finding, on the second's dashboard too
        with ApiClient(a.url, token) as via_a, ApiClient(b.url, token) as via_b:
            via_a.upload_chunks = via_b.upload_chunks  # type: ignore[method-assign]  # the balancer's choice
            sent = upload_file(via_a, tmp_path / "f.bin", "/copy.bin")
        assert (sent.chunks_sent, sent.bytes_sent) == (1, len(data))
        for server in (a, b):
            for name in ("f.bin", "copy.bin"):
                r = httpx.get(f"{server.url}/api/v1/content/{name}", headers=auth, timeout=60)
                assert r.status_code == 200 and r.content == data, (server.url, name)
        assert found_unreadable(a) == 0  # its first scrape (a scrape asks at most every 30 s)
