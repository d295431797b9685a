"""Bad input over HTTP: each kind gets a clear error code and changes nothing."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest

from cubby.core import frames


def state(users):
    """Everything a bad request might have changed: the journal head and the tree."""
    acct = users.alice.account()
    return acct["namespaces"][0]["head"], [e.path for e in users.alice.list("/", recursive=True)]


def frame(h: str, data: bytes) -> bytes:
    return bytes.fromhex(h) + struct.pack(">I", len(data)) + data


@pytest.fixture
def c(users):
    with users.raw(users.alice_token) as client:
        yield client


def test_malformed_json(users, c):
    before = state(users)
    for body in [b"{", b"[1,2]", b"\xff\xfe", b'{"path": 3}', b"null"]:
        r = c.post("/api/v1/files/mkdir", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, body
        assert r.json()["code"] in ("malformed_json", "bad_request")
        assert r.json()["message"]
    assert state(users) == before


def test_wrong_content_type(users, c):
    before = state(users)
    r = c.post("/api/v1/files/mkdir", content=b'{"path": "/x"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
    ns = users.alice.account()["root_ns"]
    r = c.post(f"/api/v1/blocks/upload?ns_id={ns}", content=b"abc", headers={"content-type": "application/json"})
    assert r.status_code == 415
    assert state(users) == before


@pytest.mark.parametrize(
    "path", ["/a/../b", "../etc/passwd", "/a/./b", "//x", "/a\x00b", "/" + "n" * 300, "/a\\b", "/dir/ trailing "]
)
def test_path_traversal_and_invalid_names(users, c, path):
    before = state(users)
    for url, body in [
        ("/api/v1/files/mkdir", {"path": path}),
        ("/api/v1/files/commit", {"path": path, "size": 0, "chunks": []}),
        ("/api/v1/files/move", {"from_path": "/x", "to_path": path}),
    ]:
        r = c.post(url, json=body)
        assert r.status_code == 400 and r.json()["code"] == "invalid_path", (url, r.text)
    r = c.get("/api/v1/files/stat", params={"path": path})
    assert r.status_code == 400 and r.json()["code"] == "invalid_path"
    assert state(users) == before


def test_chunk_whose_bytes_do_not_match_its_name(users, c):
    before = state(users)
    ns = users.alice.account()["root_ns"]
    good = os.urandom(1000)
    name = hashlib.sha256(good).hexdigest()
    r = c.post(f"/api/v1/blocks/upload?ns_id={ns}", content=frame(name, os.urandom(1000)),
               headers={"content-type": frames.CONTENT_TYPE})
    assert r.status_code == 400 and r.json()["code"] == "chunk_hash_mismatch"
    # The chunk is not usable: a commit naming it is still asked for it.
    commit = c.post("/api/v1/files/commit", json={"path": "/f", "size": 1000, "chunks": [{"hash": name, "size": 1000}]})
    assert commit.json()["status"] == "need_chunks"
    assert state(users) == before


def test_truncated_and_oversized_bodies(users, c):
    before = state(users)
    ns = users.alice.account()["root_ns"]
    data = os.urandom(5000)
    whole = frame(hashlib.sha256(data).hexdigest(), data)
    for cut in (10, 36, len(whole) - 1):
        r = c.post(f"/api/v1/blocks/upload?ns_id={ns}", content=whole[:cut], headers={"content-type": frames.CONTENT_TYPE})
        assert r.status_code == 400 and r.json()["code"] == "truncated_body", cut
    huge_len = bytes(32) + struct.pack(">I", 1 << 30)
    r = c.post(f"/api/v1/blocks/upload?ns_id={ns}", content=huge_len, headers={"content-type": frames.CONTENT_TYPE})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"

    def endless():  # a body far over the server's cap, sent without a Content-Length
        block = os.urandom(1 << 20)
        for _ in range(64):
            yield frame(hashlib.sha256(block).hexdigest(), block)

    r = c.post(f"/api/v1/blocks/upload?ns_id={ns}", content=endless(), headers={"content-type": frames.CONTENT_TYPE})
    assert r.status_code == 413
    big_json = b'{"path": "/x", "pad": "' + b"a" * (70 * 1024 * 1024) + b'"}'
    r = c.post("/api/v1/files/mkdir", content=big_json, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert state(users) == before


def test_commit_field_validation(users, c):
    before = state(users)
    h = hashlib.sha256(b"x").hexdigest()
    for body in [
        {"path": "/f", "size": -1, "chunks": []},
        {"path": "/f", "size": "1", "chunks": []},
        {"path": "/f", "size": 1, "chunks": [{"hash": "XYZ", "size": 1}]},
        {"path": "/f", "size": 1, "chunks": [{"hash": h, "size": 0}]},
        {"path": "/f", "size": 5, "chunks": [{"hash": h, "size": 1}]},
        {"path": "/f", "size": 1, "chunks": "nope"},
        {"path": "/f", "size": 1, "chunks": [], "expected_rev": "x"},
        {"path": "/f", "size": 0, "chunks": [], "mtime": "yesterday"},
    ]:
        r = c.post("/api/v1/files/commit", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["code"] in ("bad_request", "size_mismatch")
    r = c.post("/api/v1/files/commit_batch", json={"commits": []})
    assert r.status_code == 400
    r = c.post("/api/v1/files/commit_batch", json={"commits": [{"path": "/ok", "size": 0, "chunks": []}] * 1001})
    assert r.status_code == 400
    for params in [{"limit": "0"}, {"limit": "x"}, {"recursive": "maybe"}, {"cursor": "%%%"}]:
        assert c.get("/api/v1/files/list", params=params).status_code == 400
    assert state(users) == before


def test_delete_field_validation(users, c):
    """``unchanged_since`` must be a journal id; a folder changed after it is not deleted."""
    users.alice.mkdir("/keep/sub")
    before = state(users)
    for bad in (-1, "x", 1.5, [1]):
        r = c.post("/api/v1/files/delete", json={"path": "/keep", "unchanged_since": bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["code"] == "bad_request" and r.json()["message"]
    r = c.post("/api/v1/files/delete", json={"path": "/keep", "unchanged_since": 0})
    assert r.status_code == 409 and r.json()["code"] == "folder_changed"
    assert state(users) == before


def test_unknown_chunks_and_sizes_that_disagree(users, c):
    before = state(users)
    unknown = hashlib.sha256(b"nobody uploaded this").hexdigest()
    r = c.post("/api/v1/files/commit", json={"path": "/f", "size": 20, "chunks": [{"hash": unknown, "size": 20}]})
    assert r.status_code == 200 and r.json()["status"] == "need_chunks"
    assert [n["hash"] for n in r.json()["needed"]] == [unknown]
    assert state(users) == before


def test_frame_reader_never_crashes_on_arbitrary_bytes():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from cubby.errors import CubbyError

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=80), max_size=8))
    def run(pieces):
        reader = frames.FrameReader(max_frame=64)
        try:
            for p in pieces:
                for name, data in reader.feed(p):
                    assert len(name) == 64 and len(data) <= 64
            reader.close()
        except CubbyError as exc:
            assert exc.status in (400, 413)

    run()
