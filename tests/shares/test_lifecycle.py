"""Accept, rename, leave, remove and unshare, with the `cubby share` commands run as real
processes against a real server on loopback (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cubby.errors import NotFound
from tests.shares.conftest import blocks_on_disk, file_bytes, put_many

CUBBY = [str(Path(sys.executable).with_name("cubby"))]


def cubby(server, token: str, *args: str) -> list[dict]:
    env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token}
    p = subprocess.run([*CUBBY, "--json", *args], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def mounts(api) -> dict[str, int]:
    return {n["path"]: n["ns_id"] for n in api.account()["namespaces"] if n["path"] != "/"}


def test_accept_rename_leave_remove_unshare(server, people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    put_many(alice.api, {f"/Team/f{i}.txt": file_bytes(i, "team") for i in range(5)})
    bob.api.mkdir("/Team")  # bob's own folder of that name: the mount must not collide with it

    (shared,) = cubby(server, alice.token, "share", "add", "/Team", bob.name, "--role", "editor")
    ns = shared["ns_id"]
    assert shared["created"] and shared["state"] == "invited"
    cubby(server, alice.token, "share", "add", "/Team", carol.name, "--role", "viewer")
    (invitation,) = cubby(server, bob.token, "share", "ls")
    assert invitation["ns_id"] == ns and invitation["state"] == "invited" and invitation["path"] is None
    (accepted,) = cubby(server, bob.token, "share", "accept", str(ns))
    assert accepted["path"] == "/Team (1)" and mounts(bob.api) == {"/Team (1)": ns}
    carol.api.accept_share(ns)
    (mine,) = cubby(server, alice.token, "share", "ls")
    assert {m["user"]: (m["role"], m["state"]) for m in mine["members"]} == {
        alice.name: ("owner", "active"), bob.name: ("editor", "active"), carol.name: ("viewer", "active"),
    }

    # A member may put the shared folder anywhere in their own tree (not inside another one).
    bob.api.mkdir("/Work")
    bob.api.move("/Team (1)", "/Work/Team")
    assert mounts(bob.api) == {"/Work/Team": ns}
    assert len(list(bob.api.list("/Work/Team"))) == 5
    put_many(bob.api, {"/Work/Team/from-bob.txt": b"bob's file"}, ns_id=ns)
    assert alice.api.stat("/Team/from-bob.txt").size == len(b"bob's file")

    # carol leaves: it leaves her tree, her journal says so, the others keep it.
    cubby(server, carol.token, "share", "leave", "/Team")
    assert mounts(carol.api) == {}
    with pytest.raises(NotFound):
        carol.api.stat("/Team/f0.txt")
    carol_root = carol.api.account()["root_ns"]
    assert [(e.op, e.kind) for e in carol.api.journal(carol_root, 0)[0]][-2:] == [("mount", "mount"), ("unmount", "mount")]
    assert mounts(bob.api) == {"/Work/Team": ns}

    # bob is removed: the mount goes, his own /Team stays.
    cubby(server, alice.token, "share", "rm", "/Team", bob.name)
    assert mounts(bob.api) == {} and bob.api.stat("/Team").kind == "folder"
    with pytest.raises(NotFound):
        bob.api.stat("/Work/Team")

    # Invited again, then unshared: members lose it, alice keeps the folder as it was.
    alice.api.share("/Team", bob.name, "viewer")
    bob.api.accept_share(ns)
    before = sorted((e.path, e.content_hash) for e in alice.api.list("/Team", recursive=True))
    disk = blocks_on_disk(server)
    cubby(server, alice.token, "share", "unshare", "/Team")
    assert mounts(alice.api) == {} and mounts(bob.api) == {}
    assert sorted((e.path, e.content_hash) for e in alice.api.list("/Team", recursive=True)) == before
    assert blocks_on_disk(server) == disk
    assert b"".join(alice.api.download("/Team/from-bob.txt")) == b"bob's file"
    alice.api.delete("/Team/f1.txt")  # an ordinary folder of alice's root again
    root = alice.api.account()["root_ns"]
    ops = [(e.op, e.kind, e.path) for e in alice.api.journal(root, 0, limit=10_000)[0]]
    assert ("unmount", "mount", "/Team") in ops and ("mkdir", "folder", "/Team") in ops
    with pytest.raises(NotFound):
        bob.api.journal(ns, 0)
