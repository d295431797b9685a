"""Bad input to the share routes, and a viewer's token on every write route, through real HTTP
on loopback: each gets a clear error with a code, and nothing changes."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from cubby.core import frames
from tests.shares.conftest import file_bytes, put_many


def snapshot(people, ns: int) -> tuple:
    """Everything a refused request might have changed."""
    out = []
    for who in ("alice", "bob", "carol", "dave"):
        api = people[who].api
        acct = api.account()
        out.append(sorted((n["path"], n["ns_id"], n["role"], n["head"]) for n in acct["namespaces"]))
        out.append(sorted((s["ns_id"], s["state"], s["role"], len(s["members"])) for s in api.shares()))
    out.append(sorted((e.path, e.rev) for e in people["alice"].api.list("/", recursive=True)))
    out.append(sorted((e.path, e.rev) for e in people["alice"].api.list("/Shared", recursive=True)))
    return tuple(map(tuple, out))


@pytest.fixture
def setup(server, people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    put_many(alice.api, {f"/Shared/d/f{i}.txt": file_bytes(i, "bad") for i in range(3)})
    put_many(alice.api, {"/plain.txt": b"a file", "/Other/x.txt": b"x"})
    ns = alice.api.share("/Shared", bob.name, "editor")["ns_id"]
    alice.api.share("/Shared", carol.name, "viewer")
    bob.api.accept_share(ns)
    carol.api.accept_share(ns)
    return ns


def call(server, token: str, method: str, url: str, **kw) -> httpx.Response:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        return c.request(method, url, **kw)


def test_bad_share_requests_change_nothing(server, people, setup):
    ns = setup
    alice, bob, carol, dave = (people[w] for w in ("alice", "bob", "carol", "dave"))
    before = snapshot(people, ns)
    cases = [
        (alice, "POST", "/api/v1/shares", {"path": "/Nope", "user": bob.name}, 404, "not_found"),
        (alice, "POST", "/api/v1/shares", {"path": "/plain.txt", "user": bob.name}, 400, "not_a_folder"),
        (alice, "POST", "/api/v1/shares", {"path": "/", "user": bob.name}, 400, "not_a_folder"),
        (alice, "POST", "/api/v1/shares", {"path": "/Shared/d", "user": dave.name}, 400, "nested_share"),
        (bob, "POST", "/api/v1/shares", {"path": "/Shared/d", "user": dave.name}, 400, "nested_share"),
        (alice, "POST", "/api/v1/shares", {"path": "/Other", "user": alice.name}, 400, "share_with_self"),
        (alice, "POST", "/api/v1/shares", {"path": "/Other", "user": "nobody-at-all"}, 404, "unknown_user"),
        (alice, "POST", "/api/v1/shares", {"path": "/Other", "user": dave.name, "role": "owner"}, 400, "bad_request"),
        (alice, "POST", "/api/v1/shares", {"path": "/Other", "user": 7}, 400, "bad_request"),
        (alice, "POST", "/api/v1/shares", {"path": "/Shared", "user": alice.name}, 400, "share_with_self"),
        (bob, "POST", "/api/v1/shares", {"path": "/Shared", "user": dave.name}, 403, "not_owner"),
        (carol, "POST", "/api/v1/shares", {"path": "/Shared", "user": dave.name}, 403, "not_owner"),
        (dave, "POST", f"/api/v1/shares/{ns}/accept", None, 404, "no_invitation"),
        (dave, "POST", "/api/v1/shares/999999/accept", None, 404, "no_invitation"),
        (bob, "POST", "/api/v1/shares/remove", {"path": "/Shared", "user": carol.name}, 403, "not_owner"),
        (alice, "POST", "/api/v1/shares/remove", {"path": "/Shared", "user": dave.name}, 404, "not_a_member"),
        (alice, "POST", "/api/v1/shares/remove", {"path": "/Shared", "user": alice.name}, 400, "is_owner"),
        (alice, "POST", "/api/v1/shares/remove", {"path": "/Other", "user": bob.name}, 400, "not_a_shared_folder"),
        (alice, "POST", "/api/v1/shares/leave", {"path": "/Shared"}, 400, "is_owner"),
        (dave, "POST", "/api/v1/shares/leave", {"path": "/Shared"}, 400, "not_a_shared_folder"),
        (bob, "POST", "/api/v1/shares/unshare", {"path": "/Shared"}, 403, "not_owner"),
        (alice, "POST", "/api/v1/shares/unshare", {"path": "/Other"}, 400, "not_a_shared_folder"),
        (alice, "POST", "/api/v1/files/delete", {"path": "/Shared"}, 409, "is_shared_folder"),
        (bob, "POST", "/api/v1/files/move", {"from_path": "/Shared", "to_path": "/Shared/d/in"}, 400, "nested_share"),
        # a file at a shared folder's mount point: a folder, named as the member sees it
        (bob, "POST", "/api/v1/files/commit", {"path": "/Shared", "size": 0, "chunks": []}, 409, "is_a_folder"),
        (alice, "POST", "/api/v1/files/commit", {"path": "/Shared", "size": 0, "chunks": []}, 409, "is_a_folder"),
    ]
    for who, method, url, body, status, code in cases:
        r = call(server, who.token, method, url, json=body) if body is not None else call(server, who.token, method, url)
        assert (r.status_code, r.json()["code"]) == (status, code), (who.name, url, body, r.text)
        assert r.json()["message"]
        if code == "is_a_folder":
            assert r.json()["message"].startswith("/Shared is a shared folder"), r.text
    batch = call(server, bob.token, "POST", "/api/v1/files/commit_batch",
                 json={"commits": [{"path": "/Shared", "size": 0, "chunks": []}]}).json()["results"]
    assert [x["error"]["code"] for x in batch] == ["is_a_folder"]
    # A folder that holds a shared folder cannot be shared, nor deleted.
    bob.api.mkdir("/Outer")
    bob.api.move("/Shared", "/Outer/Shared")
    mid = snapshot(people, ns)
    for method, url, body, status, code in [
        ("POST", "/api/v1/shares", {"path": "/Outer", "user": dave.name}, 409, "contains_shared_folder"),
        ("POST", "/api/v1/files/delete", {"path": "/Outer"}, 409, "contains_shared_folder"),
    ]:
        r = call(server, bob.token, method, url, json=body)
        assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert snapshot(people, ns) == mid
    bob.api.move("/Outer/Shared", "/Shared")
    bob.api.delete("/Outer")
    assert snapshot(people, ns)[0] == before[0] and snapshot(people, ns)[8:] == before[8:]


def test_a_viewer_token_on_every_write_route(server, people, setup):
    ns = setup
    carol = people["carol"]
    data = b"carol's bytes"
    h = hashlib.sha256(data).hexdigest()
    commit = {"path": "/Shared/d/f0.txt", "size": len(data), "chunks": [{"hash": h, "size": len(data)}], "expected_rev": None}
    rev = people["alice"].api.stat("/Shared/d/f0.txt").rev
    before = snapshot(people, ns)
    cases = [
        ("POST", "/api/v1/files/commit", {"json": {**commit, "path": "/Shared/new.txt"}}),
        ("POST", "/api/v1/files/commit", {"json": {**commit, "expected_rev": rev}}),
        ("POST", "/api/v1/files/mkdir", {"json": {"path": "/Shared/newdir"}}),
        ("POST", "/api/v1/files/delete", {"json": {"path": "/Shared/d/f1.txt"}}),
        ("POST", "/api/v1/files/move", {"json": {"from_path": "/Shared/d/f1.txt", "to_path": "/Shared/d/g.txt"}}),
        ("POST", "/api/v1/files/move", {"json": {"from_path": "/Shared/d/f1.txt", "to_path": "/mine.txt"}}),
        ("POST", "/api/v1/files/restore", {"json": {"path": "/Shared/d/f0.txt", "rev": rev}}),
        ("POST", "/api/v1/blocks/prove", {"json": {"ns_id": ns, "proofs": {h: "00" * 32}}}),
        ("POST", f"/api/v1/blocks/upload?ns_id={ns}",
         {"content": frames.encode(h, data), "headers": {"content-type": frames.CONTENT_TYPE}}),
    ]
    for method, url, kw in cases:
        r = call(server, carol.token, method, url, **kw)
        assert (r.status_code, r.json()["code"]) == (403, "read_only"), (url, kw, r.text)
        assert "read-only" in r.json()["message"]
    r = call(server, carol.token, "POST", "/api/v1/files/commit_batch", json={"commits": [commit]})
    assert r.status_code == 200 and r.json()["results"][0]["error"]["code"] == "read_only"
    assert snapshot(people, ns) == before
