"""File modes and links through the server and every client, and a sync of a tree in few requests."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

from cubby.client.modes import version
from cubby.client.sync.engine import SyncEngine
from cubby.core.hashing import sha256_hex
from cubby.errors import BadRequest
from cubby.model import EXECUTABLE, REGULAR, SYMLINK, ChunkRef, Entry
from tests.sync.conftest import Clients


def write(p: Path, data: bytes, mode: int = 0o644) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.chmod(p, mode)


def executable(p: Path) -> bool:
    return bool(os.lstat(p).st_mode & stat.S_IXUSR)


def count_requests(e: SyncEngine) -> list[str]:
    seen: list[str] = []
    e.api.on_request.append(lambda method, path: seen.append(path))
    return seen


def test_executable_bits_and_links_round_trip_and_outside_links_are_skipped(clients: Clients) -> None:
    a, b = clients.new("alpha"), clients.new("beta")
    write(a.root / "bin" / "tool.sh", b"#!/bin/sh\necho hi\n", 0o755)
    write(a.root / "data.txt", b"plain")
    os.symlink("data.txt", a.root / "latest")
    os.symlink("../data.txt", a.root / "bin" / "data")
    os.symlink("/etc/passwd", a.root / "escape")
    os.symlink("../../elsewhere", a.root / "bin" / "climb")
    clients.settle()

    assert executable(b.root / "bin" / "tool.sh") and not executable(b.root / "data.txt")
    assert os.readlink(b.root / "latest") == "data.txt" and os.readlink(b.root / "bin" / "data") == "../data.txt"
    assert (b.root / "latest").read_bytes() == b"plain"
    assert not os.path.lexists(b.root / "escape") and not os.path.lexists(b.root / "bin" / "climb")
    modes = {e.path: e.mode for e in clients.api.list("/", recursive=True) if e.kind == "file"}
    assert modes == {"/bin/tool.sh": EXECUTABLE, "/data.txt": REGULAR, "/latest": SYMLINK, "/bin/data": SYMLINK}
    _, res = a.pending()
    assert sorted(res.outside_links) == ["bin/climb", "escape"]  # what `cubby status` lists

    # a chmod alone (no new bytes, no new mtime) travels, both ways; so does a link's new target
    os.chmod(b.root / "bin" / "tool.sh", 0o644)
    os.chmod(b.root / "data.txt", 0o755)
    os.remove(a.root / "latest")
    os.symlink("bin/tool.sh", a.root / "latest")
    clients.settle()
    for e in (a, b):
        assert not executable(e.root / "bin" / "tool.sh") and executable(e.root / "data.txt")
        assert os.readlink(e.root / "latest") == "bin/tool.sh"
    assert (a.root / "data.txt").read_bytes() == b"plain"


def test_a_link_to_outside_sent_by_another_client_is_not_made(clients: Clients) -> None:
    """Another client (or a server) may send any link text: the receiver applies the rule too."""
    a = clients.new("alpha")
    target = b"../../../etc/passwd"
    h = sha256_hex(target)
    res = clients.api.commit("/evil", len(target), [ChunkRef(h, len(target))], None, None, SYMLINK)
    if res.entry is None:
        ns = clients.api.account()["root_ns"]
        clients.api.upload_chunks(ns, [(h, target)])
        res = clients.api.commit("/evil", len(target), [ChunkRef(h, len(target))], None, None, SYMLINK)
    assert res.entry is not None
    rep = a.run_once()
    assert not os.path.lexists(a.root / "evil")
    assert any(f["path"] == "/evil" and "outside" in f["error"] for f in rep.failed)


def test_a_mode_the_server_does_not_know_is_refused(clients: Clients) -> None:
    with pytest.raises(BadRequest) as err:
        clients.api.commit("/x", 0, [], None, None, 0o104755)  # setuid: never travels
    assert err.value.code == "bad_mode"
    assert list(clients.api.list("/")) == []


def test_batch_refuses_bad_operations_and_changes_nothing(clients: Clients) -> None:
    http = clients.api.http
    for body in ({"ops": []}, {"ops": "mkdir"}, {"ops": [{"op": "mkdir", "path": "/a"}, {"op": "chmod", "path": "/a"}]},
                 {"ops": [{"op": "mkdir", "path": "/b"}] * 1001}):
        r = http.post("/api/v1/files/batch", json=body)
        assert r.status_code == 400, body
        assert r.json()["code"] == "bad_request"
    assert list(clients.api.list("/")) == []
    # each operation has its own outcome: a refused one does not stop the rest
    write_one = clients.api.batch([
        {"op": "mkdir", "path": "/ok"}, {"op": "mkdir", "path": "/bad\x00name"},
        {"op": "move", "from_path": "/missing", "to_path": "/x"}, {"op": "mkdir", "path": "/ok/deeper"},
    ])
    assert [type(o).__name__ for o in write_one] == ["Entry", "InvalidPath", "NotFound", "Entry"]
    assert sorted(e.path for e in clients.api.list("/", recursive=True)) == ["/ok", "/ok/deeper"]


def make_tree(root: Path, folders: int, files: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    dirs = [root]
    for i in range(folders):
        d = rng.choice(dirs) / f"d{i}"
        d.mkdir()
        dirs.append(d)
    for i in range(files):
        p = rng.choice(dirs) / f"f{i}.txt"
        p.write_bytes(f"file {i} ".encode() * rng.randint(1, 40))
        if i % 7 == 0:
            os.chmod(p, 0o755)
        if i % 50 == 0:
            os.symlink(p.name, p.with_name(f"link{i}"))


def test_first_sync_of_a_tree_is_a_few_batched_requests_and_a_no_op_pass_is_one(clients: Clients) -> None:
    a = clients.new("alpha")
    make_tree(a.root, 300, 1500)
    sent = count_requests(a)
    assert a.run_once().converged
    # was: one request per folder (300+); now folders, commits and chunks travel in batches
    assert len(sent) < 40, sorted(set(sent))
    assert sent.count("/api/v1/files/batch") == 1 and "/api/v1/files/mkdir" not in sent

    b = clients.new("beta")
    got = count_requests(b)
    assert b.run_once().converged
    assert len(got) < 40, sorted(set(got))
    assert sorted(p.relative_to(b.root).as_posix() for p in b.root.rglob("*") if ".cubby" not in p.parts) == sorted(
        p.relative_to(a.root).as_posix() for p in a.root.rglob("*") if ".cubby" not in p.parts
    )

    sent.clear()
    rep = a.run_once()
    assert rep.converged and not rep.applied
    assert sent == ["/api/v1/account"]  # heads match the cursors: no journal read
    assert a.last_scan.hashed == 0

    # what `cubby sync --once` does in a new process: link the folder, then one pass
    a.close()
    again = SyncEngine(a.root, a.api, host="alpha")
    clients.engines.append(again)
    sent = count_requests(again)
    again.link(clients.server.url)
    rep = again.run_once()
    assert rep.converged and not rep.applied
    assert sent == ["/api/v1/account"]  # the account link read is the pass's
    assert again.last_scan.hashed == 0


@pytest.mark.slow
@pytest.mark.timeout(900)  # a hang guard: 20,000 files take 2-6 minutes on 2 busy cores
def test_two_clients_converge_on_a_large_tree_with_modes_and_links(clients: Clients) -> None:
    a, b = clients.new("alpha"), clients.new("beta")
    make_tree(a.root, 3000, 20_000, seed=2)
    clients.settle()
    for p in a.root.rglob("*"):
        if ".cubby" in p.parts:
            continue
        q = b.root / p.relative_to(a.root)
        if p.is_symlink():
            assert os.readlink(q) == os.readlink(p)
        elif p.is_file():
            assert q.read_bytes() == p.read_bytes() and executable(q) == executable(p)
        else:
            assert q.is_dir()


def test_an_entry_without_a_mode_is_a_regular_file() -> None:
    """Entries written before modes were kept keep their version: nothing is synced again."""
    assert version("ab" * 32, None) == version("ab" * 32, REGULAR) == "ab" * 32
    assert version("ab" * 32, EXECUTABLE) != version("ab" * 32, REGULAR) != version("ab" * 32, SYMLINK)


def test_batch_mkdir_answers_each_folder_as_stat_reads_it(clients: Clients) -> None:
    """A run of creations answers every folder from the rows its transaction found or wrote
    (none is read again): new ones, their new parents, one that was there already (in another
    spelling: the first spelling stays), and one whose parent is a file (refused, nothing made)."""
    api = clients.api
    api.mkdir("/Old/Kept")
    h = sha256_hex(b"x")
    if api.commit("/Old/file", 1, [ChunkRef(h, 1)], None).entry is None:
        api.upload_chunks(api.account()["root_ns"], [(h, b"x")])
        assert api.commit("/Old/file", 1, [ChunkRef(h, 1)], None).entry is not None
    wanted = ["/New/a/b", "/New/a/c", "/old/kept", "/New/a", "/Old/file/under", "/New/d/e/f", "/Old/Kept/Child"]
    out = api.batch([{"op": "mkdir", "path": p} for p in wanted])
    assert type(out[4]).__name__ == "Conflict"
    answered = [o for i, o in enumerate(out) if i != 4]
    for got in answered:
        assert isinstance(got, Entry), got
        assert got == api.stat(got.path)
    assert [e.path for e in answered] == ["/New/a/b", "/New/a/c", "/Old/Kept", "/New/a", "/New/d/e/f", "/Old/Kept/Child"]
    assert sorted(e.path for e in api.list("/", recursive=True) if e.kind == "folder") == [
        "/New", "/New/a", "/New/a/b", "/New/a/c", "/New/d", "/New/d/e", "/New/d/e/f", "/Old", "/Old/Kept", "/Old/Kept/Child",
    ]
