"""The sync engine's upload path: a new small file is read once, the bytes a scan keeps stay
within its budget, and an upload joins the trees only after the server acknowledged it."""

from __future__ import annotations

import builtins
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cubby.client.api import ApiClient
from cubby.client.sync import planner as P
from cubby.client.sync.engine import SyncEngine
from cubby.client.sync.scanner import KeepBudget, scan
from cubby.client.sync.state import StateDb
from cubby.model import Entry
from tests.sync.conftest import Clients, local_tree


def test_a_new_small_file_is_read_once_during_a_first_sync(clients: Clients, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    a = clients.new("alpha")
    for i in range(40):
        (a.root / f"d{i % 4}").mkdir(exist_ok=True)
        (a.root / f"d{i % 4}" / f"f{i}.txt").write_bytes(os.urandom(i * 700))  # 0 to 27 KB, one empty
    (a.root / "same1.txt").write_bytes(b"same bytes")
    (a.root / "same2.txt").write_bytes(b"same bytes")  # a chunk two files hold: still one read each
    opened: dict[str, int] = {}
    lock = threading.Lock()
    real_open = builtins.open
    root = str(a.root)

    def counting_open(file, *args, **kw):  # type: ignore[no-untyped-def]
        name = os.fspath(file) if isinstance(file, (str, os.PathLike)) else ""
        if isinstance(name, str) and name.startswith(root) and "/.cubby" not in name:
            with lock:
                opened[os.path.relpath(name, root)] = opened.get(os.path.relpath(name, root), 0) + 1
        return real_open(file, *args, **kw)

    monkeypatch.setattr(builtins, "open", counting_open)
    rep = a.run_once()
    monkeypatch.undo()
    assert rep.converged and rep.applied.get("Upload") == 42, rep.to_dict()
    files = {rel for rel, data in local_tree(a.root).items() if data is not None}
    assert set(opened) == files
    assert all(n == 1 for n in opened.values()), {rel: n for rel, n in opened.items() if n != 1}
    b = clients.new("beta")
    assert b.run_once().converged
    assert local_tree(b.root) == local_tree(a.root)
    assert a.last_scan.kept == {}  # nothing held once the pass is over


def test_a_scan_keeps_small_files_only_within_its_budget(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for i in range(10):
        (root / f"s{i}").write_bytes(bytes([i]) * 3000)
    (root / "big").write_bytes(os.urandom(9000))  # over the size of a file kept
    state = StateDb(tmp_path / "state.db")
    with ThreadPoolExecutor(2) as pool:
        res = scan(root, state, pool, keep=KeepBudget(10_000, 4096))
    assert set(res.records) == {f"s{i}" for i in range(10)} | {"big"}  # every file hashed and indexed
    assert len(res.kept) == 3 and sum(map(len, res.kept.values())) <= 10_000 and "big" not in res.kept
    for rel, data in res.kept.items():
        assert data == (root / rel).read_bytes()
    assert state.file("s1") == res.records["s1"]
    with ThreadPoolExecutor(2) as pool:
        assert scan(root, StateDb(tmp_path / "other.db"), pool).kept == {}  # no budget, nothing kept
    state.close()


class Killed(BaseException):
    """Stands for a kill -9 at a crash point: nothing below the point runs."""


def test_uploads_join_the_trees_only_after_the_server_acknowledged_them(clients: Clients) -> None:
    a = clients.new("alpha")
    for i in range(30):
        (a.root / f"f{i}.txt").write_bytes(os.urandom(100 + i))
    seen_before_ack: list[int] = []

    def die(point: str) -> None:
        if point == "committed":  # the server has answered the group's commit; nothing recorded yet
            seen_before_ack.append(sum(1 for b in a.state.base_items() if b.kind == "file"))
            raise Killed(point)

    a.crash_hook = die
    try:
        a.run_once()
        raise AssertionError("the pass should have been killed once the commits were answered")
    except Killed:
        pass
    assert seen_before_ack == [0]
    assert [b for b in a.state.base_items() if b.kind == "file"] == []
    assert [r for r in a.state.remote_items() if r.kind == "file"] == []
    a.close()
    again = SyncEngine(a.root, ApiClient(clients.server.url, clients.token), host="alpha")
    clients.engines.append(again)
    rep = again.run_once()
    assert rep.converged and "Upload" not in rep.applied, rep.to_dict()  # adopted, not sent again
    assert len([b for b in again.state.base_items() if b.kind == "file"]) == 30
    b = clients.new("beta")
    assert b.run_once().converged and local_tree(b.root) == local_tree(a.root)


def _answer(node: int, path: str, rev: int) -> Entry:
    return Entry(0, node, None, path, path.rsplit("/", 1)[1], "file", rev, 3, "ab" * 32, 1.0, mode=0)


def test_a_batch_of_answers_is_recorded_as_the_answers_would_be_one_by_one(tmp_path: Path) -> None:
    answers = [
        _answer(10, "/a.txt", 5),
        _answer(11, "/b.txt", 6),
        _answer(10, "/a.txt", 4),  # older than the answer above it about the same node: no effect
        _answer(12, "/.cubby/x", 7),  # refused: the client's own state folder
        _answer(11, "/c.txt", 8),  # the same node, renamed by a later answer
    ]
    one, many = StateDb(tmp_path / "one.db"), StateDb(tmp_path / "many.db")
    for db in (one, many):
        db.add_namespace(0, "/", "owner", 0, [])
    alone = [one.put_remote_entry(e) for e in answers]
    together = many.put_remote_entries(answers)
    assert together == alone == [True, True, True, False, True]
    rows = {(r.node_id, r.path, r.rev) for r in many.remote_items()}
    assert rows == {(r.node_id, r.path, r.rev) for r in one.remote_items()} == {(10, "/a.txt", 5), (11, "/c.txt", 8)}
    assert [r.path for r in many.refusals()] == [r.path for r in one.refusals()] == ["/.cubby/x"]
    many.set_bases([P.BaseItem(0, 10, "/a.txt", "file", 5, None, 1)])
    assert [b.path for b in many.base_items()] == ["/a.txt"]
    one.close()
    many.close()
