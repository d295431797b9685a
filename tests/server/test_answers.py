"""Warm reads served from encoded answers kept in the metadata cache (`ServerContext.answer`,
keyed by the namespace head and by where the caller sees the namespace), on the event loop
when every lookup is a hit (`access.as_caller`): each member of a shared folder still gets
their own paths, an acknowledged change is in the very next answer, and a revoked token
stops at once."""

from __future__ import annotations

import pytest

from cubby.errors import Unauthorized
from tests.server.conftest import Users
from tests.server.test_api import upload_bytes


def test_members_get_their_own_paths_and_every_change_at_once(users: Users) -> None:
    a, b = users.alice, users.bob
    upload_bytes(a, "/Team/plan.txt", b"first")
    share = a.share("/Team", str(b.account()["name"]), "editor")
    mounted = b.accept_share(int(share["ns_id"]))["path"]
    b.mkdir("/Work")
    b.move(mounted, "/Work/Team")
    for _ in range(3):  # the first fills the cache, the others are hits
        assert a.stat("/Team/plan.txt").path == "/Team/plan.txt"
        assert b.stat("/Work/Team/plan.txt").path == "/Work/Team/plan.txt"
        assert [e.path for e in a.list("/Team")] == ["/Team/plan.txt"]
        assert [e.path for e in b.list("/Work/Team")] == ["/Work/Team/plan.txt"]
    assert [(e.path, e.kind) for e in b.list("/Work")] == [("/Work/Team", "folder")]

    added = upload_bytes(b, "/Work/Team/notes.txt", b"from bob")
    assert [e.path for e in a.list("/Team")] == ["/Team/notes.txt", "/Team/plan.txt"]
    assert a.stat("/Team/notes.txt").rev == added.rev
    edited = upload_bytes(a, "/Team/plan.txt", b"second", expected_rev=a.stat("/Team/plan.txt").rev)
    assert b.stat("/Work/Team/plan.txt").rev == edited.rev
    assert b.blocklist("/Work/Team/plan.txt")[0].rev == edited.rev


def test_a_revoked_token_stops_at_once(users: Users) -> None:
    made = users.alice.create_token("phone")
    upload_bytes(users.alice, "/f.txt", b"x")
    with users.raw(made["token"]) as phone:
        for _ in range(3):
            assert phone.get("/api/v1/files/stat", params={"path": "/f.txt"}).status_code == 200
        users.alice.revoke_token(int(made["id"]))
        r = phone.get("/api/v1/files/stat", params={"path": "/f.txt"})
        assert r.status_code == 401 and r.json()["code"] == Unauthorized.code
        assert phone.get("/api/v1/files/list", params={"path": "/"}).status_code == 401


@pytest.mark.parametrize("path", ["/nope.txt", "/f.txt/below"])
def test_misses_and_errors_are_not_kept(users: Users, path: str) -> None:
    a = users.alice
    upload_bytes(a, "/f.txt", b"x")
    with users.raw(users.alice_token) as raw:
        assert raw.get("/api/v1/files/stat", params={"path": path}).status_code == 404
        if path == "/nope.txt":
            upload_bytes(a, path, b"now it exists")
            assert raw.get("/api/v1/files/stat", params={"path": path}).json()["entry"]["path"] == path
