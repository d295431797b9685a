"""`cubby ls -r` walks into shared folders and marks their mount points (through HTTP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cubby.client.listing import walk
from cubby.model import Entry
from tests.helpers.live_server import ROOT, LiveServer
from tests.shares.conftest import Person, file_bytes, put_many


def cubby(server: LiveServer, token: str, *args: str) -> str:
    env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-m", "cubby", *args], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_ls_r_descends_into_shared_folders_and_marks_them(people: dict[str, Person], server: LiveServer) -> None:
    alice, bob = people["alice"], people["bob"]
    put_many(alice.api, {"/Team/plan.txt": file_bytes(1), "/Team/deep/notes.txt": file_bytes(2)})
    put_many(bob.api, {"/own/a.txt": file_bytes(3)})
    ns_id = alice.api.share("/Team", bob.name)["ns_id"]
    bob.api.accept_share(ns_id)

    rows = [json.loads(line) for line in cubby(server, bob.token, "--json", "ls", "-r", "/").splitlines()]
    by_path = {r["path"]: r for r in rows}
    assert set(by_path) == {"/own", "/own/a.txt", "/Team", "/Team/plan.txt", "/Team/deep", "/Team/deep/notes.txt"}
    assert by_path["/Team"]["mount"] is True and by_path["/Team"]["ns_id"] == ns_id
    assert not any(r.get("mount") for p, r in by_path.items() if p != "/Team")

    human = cubby(server, bob.token, "ls", "-r", "/")
    assert "/Team/  (shared folder)" in human and "/Team/deep/notes.txt" in human
    # Without -r, the mount is shown and marked, and nothing below it.
    flat = [json.loads(line) for line in cubby(server, bob.token, "--json", "ls", "/").splitlines()]
    assert {r["path"] for r in flat} == {"/own", "/Team"}
    # The owner's own view marks it too.
    owner = {json.loads(line)["path"] for line in cubby(server, alice.token, "--json", "ls", "-r", "/").splitlines()}
    assert {"/Team", "/Team/plan.txt", "/Team/deep/notes.txt"} <= owner


def test_walk_enters_each_namespace_once() -> None:
    loop = Entry(1, 5, 0, "/m", "m", "folder", 1, target_ns=7)
    calls: list[str] = []

    def lister(path: str, recursive: bool) -> list[Entry]:
        calls.append(path)
        return [loop]  # a faulty server that shows the same mount inside itself

    assert [e.path for e in walk(lister, "/", True)] == ["/m", "/m"]
    assert calls == ["/", "/m"]
