"""The issue's scenario through real HTTP on loopback, on SQLite and PostgreSQL: alice shares a
folder of 1,000 files with bob (editor) and carol (viewer); no chunk bytes move; both list and
download; bob's edit reaches alice; carol's writes are refused and change nothing; bob, once
removed, gets 404 for everything in the folder."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from cubby.client.download import download_tree
from cubby.errors import Forbidden, NotFound
from cubby.model import ChunkRef
from tests.shares.conftest import blocks_on_disk, file_bytes, put_many

N = 1000


def put_one(api, path: str, data: bytes, expected_rev=None):
    """Commit one small file, uploading its chunk to the namespace the path lives in."""
    ref = ChunkRef(hashlib.sha256(data).hexdigest(), len(data))
    res = api.commit(path, len(data), [ref], expected_rev)
    if res.committed:
        return res.entry
    ns = max(
        (n for n in api.account()["namespaces"] if path.lower().startswith(n["path"].rstrip("/").lower() + "/")),
        key=lambda n: len(n["path"]),
    )["ns_id"]
    api.upload_chunks(ns, [(ref.hash, data)])
    res = api.commit(path, len(data), [ref], expected_rev)
    assert res.committed
    return res.entry


def tree(api, path="/"):
    return sorted((e.path, e.kind, e.content_hash) for e in api.list(path, recursive=True))


def test_share_a_thousand_files_with_an_editor_and_a_viewer(server, people, tmp_path):
    alice, bob, carol = people["alice"].api, people["bob"].api, people["carol"].api
    files = {f"/Projects/d{i % 10}/f{i}.txt": file_bytes(i) for i in range(N)}
    put_many(alice, files)
    put_one(alice, "/Projects/old.txt", b"deleted before the share")
    alice.delete("/Projects/old.txt")
    before_blocks = blocks_on_disk(server)
    expected = {p.removeprefix("/Projects"): h for p, kind, h in tree(alice, "/Projects") if kind == "file"}
    assert len(expected) == N

    shared = alice.share("/Projects", people["bob"].name, "editor")
    assert shared["created"] and shared["state"] == "invited" and shared["path"] == "/Projects"
    assert alice.share("/Projects", people["carol"].name, "viewer")["created"] is False
    ns = shared["ns_id"]
    invitations = {s["ns_id"]: s for s in bob.shares()}
    assert invitations[ns]["state"] == "invited" and invitations[ns]["role"] == "editor"
    with pytest.raises(NotFound):
        bob.stat("/Projects")  # not before accepting
    assert bob.accept_share(ns)["path"] == "/Projects"
    assert carol.accept_share(ns)["path"] == "/Projects"

    # Metadata only: no chunk was written, and the folder is where it was for alice.
    assert blocks_on_disk(server) == before_blocks
    for api in (alice, bob, carol):
        assert {p.removeprefix("/Projects"): h for p, kind, h in tree(api, "/Projects") if kind == "file"} == expected
        mounts = {n["path"]: n for n in api.account()["namespaces"]}
        assert mounts["/Projects"]["ns_id"] == ns and mounts["/Projects"]["head"] >= N
    assert {n["path"]: n["role"] for n in carol.account()["namespaces"]}["/Projects"] == "viewer"

    # The file deleted before the share is visible to no member, now or in history.
    for api in (bob, carol):
        with pytest.raises(NotFound):
            api.stat("/Projects/old.txt")
        with pytest.raises(NotFound):
            api.history("/Projects/old.txt")
        entries, _, _ = api.journal(ns, 0, limit=10_000)
        assert all("old.txt" not in e.path for e in entries)

    # Both download everything; still no chunk written.
    for who, api in (("bob", bob), ("carol", carol)):
        download_tree(api, "/Projects", tmp_path / who)
        for p, d in list(files.items())[::97]:
            assert (tmp_path / who / p.removeprefix("/Projects/")).read_bytes() == d
    assert blocks_on_disk(server) == before_blocks

    # A member copies a shared file into their own root: no proof of possession is asked.
    data = files["/Projects/d1/f1.txt"]
    res = bob.commit("/mine.txt", len(data), [ChunkRef(hashlib.sha256(data).hexdigest(), len(data))])
    assert res.committed

    # bob's edit reaches alice (her view of the shared namespace's journal, and the bytes).
    head_before = alice.journal(ns, 0, limit=10_000)[1]
    old = bob.stat("/Projects/d0/f0.txt")
    edited = put_one(bob, "/Projects/d0/f0.txt", b"bob was here", expected_rev=old.rev)
    entries, head, _ = alice.journal(ns, head_before)
    assert [(e.op, e.path, e.user_id) for e in entries] == [("edit", "/d0/f0.txt", edited_user(bob))]
    assert head == edited.rev
    assert b"".join(alice.download("/Projects/d0/f0.txt")) == b"bob was here"

    # carol's writes are refused with a reason, and nothing changes.
    state = tree(alice, "/Projects"), alice.journal(ns, 0, limit=10_000)[1]
    with pytest.raises(Forbidden) as exc:
        put_one(carol, "/Projects/d0/f0.txt", b"carol", expected_rev=edited.rev)
    assert exc.value.code == "read_only" and "read-only" in exc.value.message
    for attempt in (
        lambda: carol.mkdir("/Projects/new"),
        lambda: carol.delete("/Projects/d0/f1.txt"),
        lambda: carol.move("/Projects/d0/f1.txt", "/Projects/d0/g.txt"),
        lambda: carol.restore("/Projects/d0/f0.txt", old.rev),
    ):
        with pytest.raises(Forbidden) as exc:
            attempt()
        assert exc.value.code == "read_only"
    assert (tree(alice, "/Projects"), alice.journal(ns, 0, limit=10_000)[1]) == state

    # bob is removed: his next request answers 404 for everything in the folder.
    bob_root = bob.account()["root_ns"]
    chunk = hashlib.sha256(files["/Projects/d2/f2.txt"]).hexdigest()
    assert dict(bob.fetch_chunks([chunk]))  # readable while he is a member
    alice.remove_member("/Projects", people["bob"].name)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {people['bob'].token}"}) as raw:
        for method, url, kw in [
            ("GET", "/api/v1/files/stat", {"params": {"path": "/Projects"}}),
            ("GET", "/api/v1/files/list", {"params": {"path": "/Projects/d0"}}),
            ("GET", "/api/v1/files/history", {"params": {"path": "/Projects/d0/f0.txt"}}),
            ("GET", "/api/v1/content/Projects/d0/f0.txt", {}),
            ("GET", "/api/v1/journal", {"params": {"ns_id": ns}}),
            ("POST", "/api/v1/files/delete", {"json": {"path": "/Projects/d0/f3.txt"}}),
            ("GET", f"/api/v1/blocks/{hashlib.sha256(files['/Projects/d3/f3.txt']).hexdigest()}", {}),
        ]:
            r = raw.request(method, url, **kw)
            assert r.status_code == 404, (url, r.status_code, r.text)
    assert "/Projects" not in {n["path"] for n in bob.account()["namespaces"]}
    assert bob.journal(bob_root, 0)[0][-1].op == "unmount"
    assert len([p for p, k, _ in tree(alice, "/Projects") if k == "file"]) == N  # nothing lost


def edited_user(api) -> int:
    return int(api.account()["user_id"])
