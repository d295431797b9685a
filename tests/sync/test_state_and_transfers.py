"""The state database's journal replay, and where downloads find their chunks.

Replay is checked against a real server's journal: a listing taken *after* every change,
with the cursor at the start, replayed (twice) must give the listing again, which is what
happens when a namespace appears and changes while it is being listed.
"""

from __future__ import annotations

import os
from pathlib import Path

from cubby.client import upload
from cubby.client.api import ApiClient
from cubby.client.sync import planner as P
from cubby.client.sync.engine import SyncEngine
from cubby.client.sync.state import StateDb
from tests.sync.conftest import Clients, local_tree


def _snapshot(db: StateDb) -> set[tuple[object, ...]]:
    return {(r.node_id, r.path, r.kind, r.hash) for r in db.remote_items()}


def test_journal_replay_over_a_later_listing_is_idempotent(clients: Clients, tmp_path: Path) -> None:
    api = clients.api
    src = tmp_path / "f.txt"
    src.write_bytes(b"one")
    api.mkdir("/a/b")
    upload.upload_file(api, src, "/a/b/f.txt")
    upload.upload_file(api, src, "/a/g.txt")
    api.move("/a", "/moved")                 # a folder move: one entry
    api.mkdir("/gone/inner")
    upload.upload_file(api, src, "/gone/inner/x.txt")
    api.delete("/gone")                      # a folder delete: one entry
    api.move("/moved/g.txt", "/G.txt")
    src.write_bytes(b"two")
    upload.upload_file(api, src, "/moved/b/f.txt")
    acct = api.account()
    ns = acct["namespaces"][0]
    listing = list(api.list("/", recursive=True))
    expected = {(e.node_id, e.path, e.kind, e.content_hash) for e in listing}

    db = StateDb(tmp_path / "state.db")
    db.add_namespace(ns["ns_id"], "/", "owner", 0, listing)  # cursor far behind the listing
    entries, head, _ = api.journal(ns["ns_id"], 0)
    db.apply_journal(ns["ns_id"], entries, head)
    assert _snapshot(db) == expected
    db.apply_journal(ns["ns_id"], entries, head)             # a page applied twice (crash before the cursor)
    assert _snapshot(db) == expected
    assert db.cursors() == {ns["ns_id"]: head}


def test_mount_entries_are_skipped_and_namespaces_come_and_go(tmp_path: Path) -> None:
    from cubby.model import JournalEntry

    db = StateDb(tmp_path / "state.db")
    db.add_namespace(1, "/", "owner", 0, [])
    db.add_namespace(7, "/Team", "viewer", 0, [])
    db.apply_journal(1, [JournalEntry(1, 1, "add", 5, 1, "mount", "/Team", "Team", 1)], 1)  # type: ignore[arg-type]
    db.apply_journal(7, [JournalEntry(7, 1, "add", 2, 1, "file", "/doc.txt", "doc.txt", 1, 3, "h")], 1)
    assert {(r.ns_id, r.path) for r in db.remote_items()} == {(7, "/Team"), (7, "/Team/doc.txt")}
    db.update_namespace(7, "/Shared", "editor")
    assert {(r.ns_id, r.path) for r in db.remote_items()} == {(7, "/Shared"), (7, "/Shared/doc.txt")}
    db.drop_namespace(7)
    assert db.remote_items() == [] and db.evicted() == ["/Shared"]


def test_a_folder_that_moves_to_a_new_namespace_is_adopted_without_transfer() -> None:
    """What the owner of a folder sees when it is shared: same content, new namespace and ids."""
    base = [P.BaseItem(1, 10, "/P", "folder", 3, None, 100), P.BaseItem(1, 11, "/P/a.txt", "file", 4, "h1", 101)]
    remote = [P.RemoteItem(2, 0, "/P", "folder", 0), P.RemoteItem(2, 5, "/P/a.txt", "file", 9, "h1")]
    local = [P.LocalItem("/P", "P", "folder", None, 100), P.LocalItem("/P/a.txt", "P/a.txt", "file", "h1", 101)]
    ops = P.plan(base, remote, local, P.Context(mounts={"/": (1, True), "/P": (2, True)}))
    assert ops and all(isinstance(o, P.Adopt) for o in ops)


class CountingApi(ApiClient):
    """The real client, counting the chunks it fetches from the server."""

    fetched = 0

    def fetch_chunks(self, hashes):  # type: ignore[no-untyped-def, override]
        for name, data in super().fetch_chunks(hashes):
            self.fetched += 1
            yield name, data


def test_downloads_use_local_chunks_and_the_cache_before_the_server(clients: Clients) -> None:
    a = clients.new("alpha")
    b = clients.new("beta")
    b.api = CountingApi(clients.server.url, clients.token)
    data = os.urandom(3_000_000)
    (a.root / "orig.bin").write_bytes(data)
    clients.settle()
    b.api.fetched = 0  # type: ignore[attr-defined]
    # a copy of a file b already holds: every chunk comes from b's own disk
    (a.root / "copy.bin").write_bytes(data)
    clients.settle()
    assert b.api.fetched == 0  # type: ignore[attr-defined]
    # a one-byte edit of a large file: only the chunk around the edit travels
    big = bytearray(os.urandom(8_000_000))
    (a.root / "big.bin").write_bytes(big)
    clients.settle()
    fetched_for_big = b.api.fetched  # type: ignore[attr-defined]
    big[4_000_000] ^= 1
    (a.root / "big.bin").write_bytes(big)
    clients.settle()
    assert b.api.fetched - fetched_for_big <= 2  # type: ignore[attr-defined]
    assert local_tree(b.root)["copy.bin"] == data

    # deleted, then brought back: the chunks come from b's cache
    (a.root / "orig.bin").unlink()
    (a.root / "copy.bin").unlink()
    clients.settle()
    before = b.api.fetched  # type: ignore[attr-defined]
    (a.root / "back.bin").write_bytes(data)
    clients.settle()
    assert b.api.fetched == before  # type: ignore[attr-defined]
    assert (b.root / "back.bin").read_bytes() == data


class RequestCountingApi(ApiClient):
    """The real client, counting its HTTP requests (`ApiClient.on_request`, and each fetch)."""

    def __init__(self, *args, **kw):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kw)
        self.requests = 0
        self.on_request.append(self._count)

    def _count(self, method: str, path: str) -> None:
        self.requests += 1

    def fetch_chunks(self, hashes):  # type: ignore[no-untyped-def, override]
        self.requests += 1
        yield from super().fetch_chunks(hashes)


def test_a_thousand_small_files_take_a_few_requests(clients: Clients) -> None:
    a, b = clients.new("alpha"), clients.new("beta")
    a.api = RequestCountingApi(clients.server.url, clients.token)
    b.api = RequestCountingApi(clients.server.url, clients.token)
    for i in range(1000):
        d = a.root / f"d{i % 5}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.txt").write_bytes(f"small file {i}".encode())
    assert a.run_once().converged
    assert b.run_once().converged
    assert len(local_tree(b.root)) == 1005
    print(f"requests for 1000 files: upload side {a.api.requests}, download side {b.api.requests}")  # type: ignore[attr-defined]
    assert a.api.requests < 40, a.api.requests  # type: ignore[attr-defined]
    assert b.api.requests < 40, b.api.requests  # type: ignore[attr-defined]


def test_the_periodic_scan_does_not_poll_the_server(clients: Clients) -> None:
    a, b = clients.new("alpha"), clients.new("beta")
    b.api = RequestCountingApi(clients.server.url, clients.token)
    (a.root / "x.txt").write_bytes(b"x")
    clients.settle()
    b.api.requests = 0  # type: ignore[attr-defined]
    rep = b.run_once(local_first=True)  # nothing changed locally: no request at all
    assert rep.converged and b.api.requests == 0  # type: ignore[attr-defined]
    (b.root / "y.txt").write_bytes(b"y")
    rep = b.run_once(local_first=True)  # a local change: a full pass
    assert rep.applied.get("Upload") == 1 and b.api.requests > 0  # type: ignore[attr-defined]



class Killed(BaseException):
    """Stands for a kill -9 at a crash point: nothing below the point runs."""


def run_until_killed(engine: SyncEngine, where: str) -> None:
    """Run a pass of ``engine`` that dies at the crash point ``where`` (it must reach it)."""

    def die(point: str) -> None:
        if point == where:
            raise Killed(point)

    engine.crash_hook = die
    try:
        engine.run_once()
    except Killed:
        return
    raise AssertionError(f"the pass should have been killed at {where}")


def test_a_large_download_killed_halfway_resumes(clients: Clients, tmp_path: Path) -> None:
    a = clients.new("alpha")
    data = os.urandom(48 * 1024 * 1024)
    (a.root / "large.bin").write_bytes(data)
    clients.settle([a])
    b = clients.new("beta")
    b.api = CountingApi(clients.server.url, clients.token)
    run_until_killed(b, "download_window")
    first = b.api.fetched  # type: ignore[attr-defined]
    b.close()
    again = SyncEngine(b.root, CountingApi(clients.server.url, clients.token), host="beta")
    clients.engines.append(again)
    assert again.run_once().converged
    assert (again.root / "large.bin").read_bytes() == data
    total = len(clients.api.blocklist("/large.bin")[1])
    # what the killed run wrote (about one 16 MiB window) is not fetched again
    assert first > 0 and again.api.fetched <= total - 8  # type: ignore[attr-defined]


def _on_disk(root: Path) -> dict[str, tuple[int, int]]:
    """rel -> (size, inode) of every file and link under ``root``, the state folder left out."""
    out = {}
    for dirpath, dnames, fnames in os.walk(root):
        dnames[:] = [d for d in dnames if d != ".cubby"]
        for f in fnames:
            st = os.lstat(os.path.join(dirpath, f))
            out[os.path.relpath(os.path.join(dirpath, f), root)] = (st.st_size, st.st_ino)
    return out


def test_a_download_is_recorded_only_after_a_barrier_that_follows_its_rename(clients: Clients, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What a crash keeps is what was on disk at the last barrier (``syncfs``): every file the
    state records as synced must have been in place, with the inode and size recorded, then."""
    from cubby.core import durable

    a = clients.new("alpha")
    for i in range(30):
        (a.root / "d" / str(i % 3)).mkdir(parents=True, exist_ok=True)
        (a.root / "d" / str(i % 3) / f"f{i}.txt").write_bytes(os.urandom(100 + i))
    (a.root / "run.sh").write_bytes(b"#!/bin/sh\n")
    (a.root / "run.sh").chmod(0o755)
    os.symlink("d/0/f0.txt", a.root / "link")
    (a.root / "big.bin").write_bytes(os.urandom(20 * 1024 * 1024))  # streamed alone
    clients.settle([a])
    b = clients.new("beta")
    at_barrier: dict[str, tuple[int, int]] = {}
    real = durable.barrier

    def barrier(anchor, paths=None):  # type: ignore[no-untyped-def]
        real(anchor, paths)
        at_barrier.clear()
        at_barrier.update(_on_disk(b.root))

    monkeypatch.setattr(durable, "barrier", barrier)
    put_files, recorded = b.state.put_files, []

    def checked(recs):  # type: ignore[no-untyped-def]
        recs = list(recs)
        for r in recs:
            assert at_barrier.get(r.rel) == (r.size, r.inode), f"{r.rel} recorded before it was durable in place"
            recorded.append(r.rel)
        put_files(recs)

    monkeypatch.setattr(b.state, "put_files", checked)
    assert b.run_once().converged
    assert len(recorded) == 33 and local_tree(b.root) == local_tree(a.root)


def test_a_crash_between_rename_and_record_is_adopted_without_a_transfer(clients: Clients) -> None:
    a = clients.new("alpha")
    for i in range(20):
        (a.root / f"f{i}.txt").write_bytes(os.urandom(200))
    clients.settle([a])
    b = clients.new("beta")
    run_until_killed(b, "download_renamed")
    assert b.state.files() == {} and len(_on_disk(b.root)) == 20  # in place, recorded nowhere
    b.close()
    again = SyncEngine(b.root, CountingApi(clients.server.url, clients.token), host="beta")
    clients.engines.append(again)
    rep = again.run_once()
    assert rep.converged and "Download" not in rep.applied and again.api.fetched == 0  # type: ignore[attr-defined]
    assert local_tree(again.root) == local_tree(a.root) and len(again.state.files()) == 20


def test_a_first_download_pays_one_barrier_per_batch_and_records_folders_only_once_durable(
    clients: Clients, monkeypatch  # type: ignore[no-untyped-def]
) -> None:
    """A batch's barrier makes its temp files durable and the renames of the batch before it,
    and the folders made before the downloads ride on the first batch's barrier: each batch
    costs one barrier (and the last batch one more), and still nothing, folder or file, is
    recorded before a barrier found it in place."""
    from cubby.client.windows import BATCH
    from cubby.core import durable

    a = clients.new("alpha")
    n = 2 * BATCH + 200  # three batches of chunk lists: three batches landed
    for i in range(n):
        (a.root / f"d{i % 40}" / f"e{i % 3}").mkdir(parents=True, exist_ok=True)
        (a.root / f"d{i % 40}" / f"e{i % 3}" / f"f{i}.txt").write_bytes(b"%d" % i)
    clients.settle([a])
    b = clients.new("beta")
    at_barrier: set[str] = set()
    barriers = [0]
    real = durable.barrier

    def barrier(anchor, paths=None):  # type: ignore[no-untyped-def]
        real(anchor, paths)
        barriers[0] += 1
        at_barrier.clear()
        for dirpath, dnames, fnames in os.walk(b.root):
            dnames[:] = [d for d in dnames if d != ".cubby"]
            at_barrier.update(os.path.relpath(os.path.join(dirpath, x), b.root) for x in dnames + fnames)

    monkeypatch.setattr(durable, "barrier", barrier)
    set_bases, put_files, recorded = b.state.set_bases, b.state.put_files, []

    def bases_checked(items):  # type: ignore[no-untyped-def]
        items = list(items)
        for it in items:
            assert it.path.lstrip("/") in at_barrier, f"{it.path} recorded before it was durable in place"
            recorded.append(it.path)
        set_bases(items)

    def files_checked(recs):  # type: ignore[no-untyped-def]
        recs = list(recs)
        for r in recs:
            assert r.rel in at_barrier, f"{r.rel} recorded before it was durable in place"
        put_files(recs)

    monkeypatch.setattr(b.state, "set_bases", bases_checked)
    monkeypatch.setattr(b.state, "put_files", files_checked)
    rep = b.run_once()
    assert rep.converged and rep.applied.get("Download") == n and rep.applied.get("MkdirLocal") == 40 * 4
    assert len(recorded) == n + 40 * 4 and local_tree(b.root) == local_tree(a.root)
    assert barriers[0] == 3 + 1  # one per batch, and one for the last batch's renames
