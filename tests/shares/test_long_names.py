"""Names never wedge an account (through HTTP on a live server).

A shared folder whose name is 255 bytes is mounted under a name cut to fit (``name (1)`` would
be 259 bytes: a mount nobody can stat, rename or leave); a move that would push a path below
the moved folder past the path limit is refused and changes nothing; a shared folder can be
left by its id; and the invitee's sync client works with such a mount.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cubby.client.api import ApiClient
from cubby.client.sync.engine import SyncEngine
from cubby.core import paths
from cubby.errors import CubbyError
from tests.helpers.live_server import ROOT, LiveServer
from tests.shares.conftest import Person, file_bytes, put_many

LONG = "é" * 120 + "x" * 15  # 255 bytes in UTF-8


def test_a_255_byte_folder_is_mounted_under_a_name_that_fits_and_can_be_left_by_id(
    people: dict[str, Person], server: LiveServer, tmp_path: Path
) -> None:
    alice, bob = people["alice"], people["bob"]
    assert len(LONG.encode()) == 255
    put_many(alice.api, {f"/{LONG}/a.txt": file_bytes(1)})
    bob.api.mkdir(f"/{LONG}")  # bob already has a folder of that name: the mount needs " (1)"
    ns_id = alice.api.share(f"/{LONG}", bob.name)["ns_id"]
    mount = bob.api.accept_share(ns_id)["path"]
    name = paths.split(mount)[1]
    assert name.endswith(" (1)") and len(name.encode()) <= 255
    assert name.startswith("é" * 100)
    # The invitee can list it, sync it, rename it and leave it.
    assert [e.path for e in bob.api.list(mount)] == [f"{mount}/a.txt"]
    root = tmp_path / "bob"
    root.mkdir()
    eng = SyncEngine(root, ApiClient(server.url, bob.token), host="bob")
    try:
        report = eng.run_once()
        assert report.converged and not report.failed, report.to_dict()
        assert (root / name / "a.txt").read_bytes() == file_bytes(1)
        assert not eng.state.refusals()
    finally:
        eng.close()
        eng.api.close()
    bob.api.move(mount, "/short")
    left = bob.api.leave_share(ns_id)
    assert left["ns_id"] == ns_id
    assert "/short" not in {e.path for e in bob.api.list("/")}
    assert [e.path for e in alice.api.list(f"/{LONG}")] == [f"/{LONG}/a.txt"]  # the owner keeps it


def test_a_mount_without_a_clash_keeps_its_whole_255_byte_name(people: dict[str, Person]) -> None:
    alice, bob = people["alice"], people["bob"]
    alice.api.mkdir(f"/{LONG}")
    ns_id = alice.api.share(f"/{LONG}", bob.name)["ns_id"]
    assert bob.api.accept_share(ns_id)["path"] == f"/{LONG}"


def test_leave_by_id_refuses_what_is_not_the_callers(people: dict[str, Person]) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    alice.api.mkdir("/F")
    ns_id = alice.api.share("/F", bob.name)["ns_id"]
    bob.api.accept_share(ns_id)
    with pytest.raises(CubbyError) as exc:
        carol.api.leave_share(ns_id)
    assert exc.value.code == "not_a_member"
    with pytest.raises(CubbyError) as exc:
        carol.api.leave_share(2**63 + 5)  # past BIGINT: refused as input, like every id field
    assert exc.value.code == "bad_request" and exc.value.status == 400
    with pytest.raises(CubbyError) as exc:
        carol.api.leave_share(2**62 + 5)
    assert exc.value.code == "not_a_member"
    with pytest.raises(CubbyError) as exc:
        alice.api.leave_share(ns_id)
    assert exc.value.code == "is_owner"
    assert "/F" in {e.path for e in bob.api.list("/")}


def test_cubby_share_leave_takes_the_id(people: dict[str, Person], server: LiveServer) -> None:
    alice, bob = people["alice"], people["bob"]
    alice.api.mkdir("/G")
    ns_id = alice.api.share("/G", bob.name)["ns_id"]
    bob.api.accept_share(ns_id)
    env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": bob.token, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-m", "cubby", "share", "leave", str(ns_id)], env=env, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "left /G" in out.stdout
    assert "/G" not in {e.path for e in bob.api.list("/")}


def deep_tree(api: ApiClient) -> str:
    """A folder whose deepest path is about 2,800 bytes: eleven 250-byte names under /top."""
    path = "/top"
    for i in range(11):
        path += "/" + f"{i:02d}" + "d" * 248
    put_many(api, {path + "/f.txt": b"deep"})
    return path


def test_a_move_that_would_make_a_path_below_too_long_is_refused(people: dict[str, Person]) -> None:
    alice = people["alice"]
    deepest = deep_tree(alice.api)
    assert len(deepest.encode()) < paths.MAX_PATH_BYTES
    alice.api.mkdir("/" + "m" * 200)
    before = sorted(e.path for e in alice.api.list("/", recursive=True))
    with pytest.raises(CubbyError) as exc:
        alice.api.move("/top", "/" + "m" * 200 + "/top")
    assert exc.value.code == "path_too_long"
    assert "move it higher up" in exc.value.message
    assert sorted(e.path for e in alice.api.list("/", recursive=True)) == before
    alice.api.move("/top", "/t")  # a move that shortens is fine
    assert alice.api.list("/t", recursive=True)


def test_a_move_into_a_shared_folder_that_would_make_a_path_too_long_is_refused(people: dict[str, Person]) -> None:
    """Across namespaces (the move saga): the paths are the shared namespace's own."""
    alice, bob = people["alice"], people["bob"]
    deep_tree(alice.api)
    alice.api.mkdir("/S/" + "s" * 200)
    ns_id = alice.api.share("/S", bob.name)["ns_id"]
    bob.api.accept_share(ns_id)
    before = sorted(e.path for e in alice.api.list("/", recursive=True))
    with pytest.raises(CubbyError) as exc:
        alice.api.move("/top", "/S/" + "s" * 200 + "/top")
    assert exc.value.code == "path_too_long"
    assert sorted(e.path for e in alice.api.list("/", recursive=True)) == before
