"""A first sync's upload: chunks go to the server while the scan still hashes (`presend`),
and the journal is not read back for the client's own changes (`StateDb.skip_answered`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import pytest

from cubby.client.sync.scanner import KeepBudget, scan
from cubby.client.sync.state import FileRecord, StateDb
from cubby.client.windows import BATCH
from cubby.model import Entry
from tests.sync.conftest import Clients, local_tree, server_tree


def _answer(node: int, path: str, rev: int) -> Entry:
    return Entry(1, node, None, path, path.rsplit("/", 1)[1], "file", rev, 3, "ab" * 32, 1.0, mode=0)


def test_the_cursor_skips_only_ids_that_are_all_answers_already_recorded(tmp_path: Path) -> None:
    state = StateDb(tmp_path / "state.db")
    state.add_namespace(1, "/", "owner", 10, [])
    assert state.put_remote_entries([_answer(100, "/a", 11), _answer(101, "/b", 12)]) == [True, True]
    assert state.skip_answered(1, 12) and state.cursors()[1] == 12
    state.put_remote_entries([_answer(102, "/c", 14)])  # 13 is someone else's change
    assert not state.skip_answered(1, 14) and state.cursors()[1] == 12
    state.apply_journal(1, [], 13)  # (read from the journal)
    assert state.skip_answered(1, 14) and state.cursors()[1] == 14
    with pytest.raises(RuntimeError), state.tx():  # an answer rolled back is not one recorded
        state.put_remote_entries([_answer(103, "/d", 15)])
        raise RuntimeError
    assert not state.skip_answered(1, 15) and state.cursors()[1] == 14
    assert state.put_remote_entries([_answer(104, "/x/../e", 16)]) == [False]  # refused: not skipped
    state.apply_journal(1, [], 15)
    assert not state.skip_answered(1, 16)
    state.close()


def test_a_first_sync_sends_each_chunk_once_and_reads_back_no_journal(clients: Clients) -> None:
    a = clients.new("alpha")
    n = 2 * BATCH + 300  # two full groups go while the scan runs, the rest with the uploads
    for i in range(n):
        folder = a.root / f"d{i % 7}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i}.txt").write_bytes(os.urandom(200 + i % 3000) if i % 50 else b"same bytes")
    (a.root / "run.sh").write_bytes(b"#!/bin/sh\n")
    (a.root / "run.sh").chmod(0o755)
    os.symlink("d0/f0.txt", a.root / "link")
    calls: dict[str, int] = {}
    uploaded: list[str] = []
    lock = threading.Lock()

    def counting(name: str, fn: Any) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            with lock:
                calls[name] = calls.get(name, 0) + 1
                if name == "upload_chunks":
                    uploaded.extend(h for h, _ in args[1])
            return fn(*args, **kw)

        return call

    for name in ("journal", "upload_chunks", "prove", "commit_batch"):
        setattr(a.api, name, counting(name, getattr(a.api, name)))
    rep = a.run_once()
    assert rep.converged and rep.applied.get("Upload") == n + 2, rep.to_dict()
    assert len(uploaded) == len(set(uploaded))  # no chunk sent twice (the presend's are skipped)
    assert calls["journal"] == 1  # the first replay from the head: the pass's own commits are not read back
    assert calls["commit_batch"] == 3  # one per group: the presend's groups were not asked for again
    on_server, here = server_tree(clients.api), local_tree(a.root)
    assert on_server.pop("link") == b"d0/f0.txt" and here.pop("link") is not None  # (read through, here)
    assert on_server == here
    b = clients.new("beta")
    assert b.run_once().converged
    assert local_tree(b.root) == local_tree(a.root)
    assert os.readlink(b.root / "link") == "d0/f0.txt" and os.access(b.root / "run.sh", os.X_OK)
    # a change by another client after the pass is read from the journal as ever
    (b.root / "new.txt").write_bytes(b"from beta")
    assert b.run_once().converged
    assert a.run_once().converged and (a.root / "new.txt").read_bytes() == b"from beta"


class InlineExecutor(Executor):
    """Runs each task as it is submitted, counting them: a scan's hashing tasks are then done
    as soon as the walk hands them out, and the count says how far the walk had got."""

    def __init__(self) -> None:
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        done: Future[Any] = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed over, as an executor does
            done.set_exception(exc)
        return done


def test_a_scan_gives_new_files_to_the_presend_while_the_walk_goes_on(tmp_path: Path) -> None:
    """The scan hands each new file it kept to ``on_new`` (the presend) as its hashing task is
    done, not after the whole tree was walked, and its result is the one a scan that waited
    would give: every file, in walk order, each after its folder, all in the file index."""
    root = tmp_path / "root"
    for d in range(12):
        (root / f"d{d:02}" / "sub").mkdir(parents=True)
        for f in range(40):
            (root / f"d{d:02}" / ("sub" if f % 4 == 0 else "") / f"f{f}.txt").write_bytes(os.urandom(100 + f))
    state = StateDb(tmp_path / "state.db")
    pool = InlineExecutor()
    told: list[tuple[str, int]] = []

    def on_new(rel: str, rec: FileRecord, data: bytes) -> None:
        assert rec.rel == rel and rec.size == len(data)
        told.append((rel, pool.submitted))

    res = scan(root, state, pool, keep=KeepBudget(1 << 24, 1 << 16), on_new=on_new)
    files = [i for i in res.items if i.kind == "file"]
    assert len(files) == 12 * 40 and sorted(rel for rel, _ in told) == sorted(i.rel for i in files)
    assert told[0][1] < pool.submitted  # the first files went while tasks were still being handed out
    assert [rel for rel, _ in told] == [i.rel for i in files]  # in walk order, as the items are
    seen: set[str] = set()
    for item in res.items:  # each folder before what it holds
        assert os.path.dirname(item.rel) in seen | {""}
        seen.add(item.rel)
    assert set(state.file_stamps()) == {i.rel for i in files} and res.hashed == len(files)
    again = scan(root, state, InlineExecutor(), keep=KeepBudget(1 << 24, 1 << 16), on_new=on_new)
    assert sorted((i.rel, i.hash) for i in again.items) == sorted((i.rel, i.hash) for i in res.items) and again.hashed == 0
    state.close()
