"""Every route through real HTTP on loopback: the happy paths and the access rules."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from cubby.client.download import download_file
from cubby.client.upload import upload_file
from cubby.core.chunking import chunk_bytes
from cubby.errors import ChunkMismatch, Conflict, NotFound, Unauthorized
from cubby.model import ChunkRef


def upload_bytes(api, path: str, data: bytes, expected_rev=None):
    chunks = chunk_bytes(data)
    refs = [ChunkRef(c.hash, c.length) for c in chunks]
    res = api.commit(path, len(data), refs, expected_rev)
    if res.committed:
        return res.entry
    ns = api.account()["root_ns"]
    api.upload_chunks(ns, [(c.hash, c.data) for c in chunks])
    res = api.commit(path, len(data), refs, expected_rev)
    assert res.committed
    return res.entry


def test_file_lifecycle(users):
    a = users.alice
    e1 = upload_bytes(a, "/Docs/Note.txt", b"first version")
    assert a.stat("/docs/note.txt").path == "/Docs/Note.txt"
    e2 = upload_bytes(a, "/Docs/Note.txt", b"second version", expected_rev=e1.rev)
    with pytest.raises(Conflict):
        upload_bytes(a, "/Docs/Note.txt", b"stale writer", expected_rev=e1.rev)
    assert [e.path for e in a.list("/", recursive=True)] == ["/Docs", "/Docs/Note.txt"]
    a.mkdir("/Archive/2026")
    moved = a.move("/Docs", "/Archive/2026/Docs")
    assert moved.kind == "folder" and a.stat("/archive/2026/docs/note.txt").rev == e2.rev
    revs = [r["rev"] for r in a.history("/Archive/2026/Docs/Note.txt")]
    assert revs == [e2.rev, e1.rev]
    restored = a.restore("/Archive/2026/Docs/Note.txt", e1.rev)
    assert b"".join(a.download("/Archive/2026/Docs/Note.txt")) == b"first version"
    a.delete("/Archive")
    with pytest.raises(NotFound):
        a.stat("/Archive/2026/Docs/Note.txt")
    entries, head, more = a.journal(a.account()["root_ns"], 0)
    assert [j.jid for j in entries] == list(range(1, head + 1)) and not more
    assert entries[-1].op == "delete" and restored.rev in [j.jid for j in entries]


def test_tokens_create_list_revoke(users):
    a = users.alice
    t = a.create_token("laptop")
    with users.raw(t["token"]) as extra:
        assert extra.get("/api/v1/account").status_code == 200
        a.revoke_token(t["id"])
        r = extra.get("/api/v1/account")
        assert r.status_code == 401 and r.json()["code"] == "unauthorized" and "revoked" in r.json()["message"]
    assert any(x["id"] == t["id"] and x["revoked_at"] for x in a.list_tokens())
    with pytest.raises(NotFound):
        users.bob.revoke_token(t["id"])


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic dXNlcjpwYXNz"])
def test_requests_without_a_valid_token_are_refused(users, header):
    headers = {"Authorization": header} if header else {}
    with httpx.Client(base_url=users.server.url, headers=headers) as c:
        for method, url in [("GET", "/api/v1/account"), ("GET", "/api/v1/files/list"), ("POST", "/api/v1/files/mkdir")]:
            r = c.request(method, url, json={"path": "/x"})
            assert r.status_code == 401 and r.json()["code"] == "unauthorized"


def test_another_users_namespace_and_chunks_answer_404(users):
    a, _b = users.alice, users.bob
    data = os.urandom(10_000)
    upload_bytes(a, "/private.bin", data)
    h = hashlib.sha256(data).hexdigest()
    a_ns = a.account()["root_ns"]
    with users.raw(users.bob_token) as raw:
        for r in [
            raw.get("/api/v1/journal", params={"ns_id": a_ns}),
            raw.get(f"/api/v1/blocks/{h}"),
            raw.post("/api/v1/blocks/fetch", json={"hashes": [h]}),
            raw.post("/api/v1/blocks/prove", json={"ns_id": a_ns, "proofs": {}}),
            raw.post(f"/api/v1/blocks/upload?ns_id={a_ns}", content=b"", headers={"content-type": "application/x-cubby-chunks"}),
        ]:
            assert r.status_code == 404, r.text
            assert r.json()["code"] == "not_found"
        # Bob's own tree simply has no such file: a 404 like any other.
        assert raw.get("/api/v1/files/stat", params={"path": "/private.bin"}).status_code == 404
        # A never-seen hash gets exactly the same answer as Alice's chunk.
        other = hashlib.sha256(b"never stored").hexdigest()
        r1 = raw.get(f"/api/v1/blocks/{h}")
        r2 = raw.get(f"/api/v1/blocks/{other}")
        assert (r1.status_code, r1.json()["code"]) == (r2.status_code, r2.json()["code"])


def test_hash_only_claim_learns_nothing_and_possession_dedups(users, tmp_path):
    a, b = users.alice, users.bob
    data = os.urandom(3 * 1024 * 1024)
    upload_bytes(a, "/shared-content.bin", data)
    refs = [ChunkRef(c.hash, c.length) for c in chunk_bytes(data)]
    held = b.commit("/mine.bin", len(data), refs)
    fake = [ChunkRef(hashlib.sha256(os.urandom(8)).hexdigest(), r.size) for r in refs]
    unheld = b.commit("/other.bin", len(data), fake)
    assert not held.committed and not unheld.committed
    assert len(held.needed) == len(unheld.needed)  # same answer whether or not the server holds them
    b_ns = b.account()["root_ns"]
    sizes = {r.hash: r.size for r in refs}
    accepted, rejected = b.prove(b_ns, {n.hash: (sizes[n.hash], "0" * 64) for n in held.needed})
    assert accepted == [] and len(rejected) == len(held.needed)
    with pytest.raises(NotFound):
        list(b.fetch_chunks([refs[0].hash]))
    # With the bytes in hand, proving possession commits without sending them.
    src = tmp_path / "mine.bin"
    src.write_bytes(data)
    result = upload_file(b, src, "/mine.bin")
    assert result.chunks_sent == 0 and result.bytes_sent == 0
    out = download_file(b, "/mine.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data and out.size == len(data)


def test_range_requests(users):
    a = users.alice
    data = os.urandom(2 * 1024 * 1024 + 12345)
    upload_bytes(a, "/r.bin", data)
    with users.raw(users.alice_token) as c:
        def get(rng):
            return c.get("/api/v1/content/r.bin", headers={"Range": rng} if rng else {})

        whole = get(None)
        assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"
        r = get("bytes=0-99")
        assert r.status_code == 206 and r.content == data[:100]
        assert r.headers["content-range"] == f"bytes 0-99/{len(data)}"
        mid = 1024 * 1024 - 50
        assert get(f"bytes={mid}-{mid + 2_000_000}").content == data[mid : mid + 2_000_001]
        assert get("bytes=-500").content == data[-500:]
        assert get(f"bytes={len(data) - 10}-").content == data[-10:]
        bad = get(f"bytes={len(data)}-")
        assert bad.status_code == 416 and bad.json()["code"] == "range_not_satisfiable"
        etag = whole.headers["etag"]
        assert c.get("/api/v1/content/r.bin", headers={"If-None-Match": etag}).status_code == 304


def test_openapi_document_is_served(users):
    with users.raw() as c:
        doc = c.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/v1/files/commit" in doc["paths"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_bad_token_types_do_not_crash(users):
    with pytest.raises(Unauthorized):
        from cubby.client.api import ApiClient

        ApiClient(users.server.url, "x" * 5000).account()


def test_fetch_streams_many_chunks_in_order_and_the_client_refuses_a_corrupt_one(users, live):
    """The fetch route does not hash what it reads (the client hashes every chunk it gets):
    several MiB of chunks still arrive whole and in the order asked, and a chunk corrupted on
    the server's disk is refused by the client, while the single-chunk route, which nobody
    checks after the server, refuses it itself."""
    a = users.alice
    data = os.urandom(9 * 1024 * 1024)
    upload_bytes(a, "/fetched.bin", data)
    chunks = chunk_bytes(data)
    assert len(chunks) >= 3
    asked = [c.hash for c in reversed(chunks)]
    assert [(n, d) for n, d in a.fetch_chunks(asked)] == [(c.hash, c.data) for c in reversed(chunks)]

    victim = chunks[1]
    needle = victim.data[1000:1064]
    [pack] = [p for p in live.data_dir.rglob("*.pack") if needle in p.read_bytes()]
    blob = bytearray(pack.read_bytes())
    blob[blob.index(needle)] ^= 0xFF
    pack.write_bytes(bytes(blob))
    with pytest.raises(ChunkMismatch):
        list(a.fetch_chunks([victim.hash]))
    with users.raw(users.alice_token) as raw:
        r = raw.get(f"/api/v1/blocks/{victim.hash}")
        assert r.status_code == 500 and r.json()["code"] == "corrupt_chunk"
