"""SQLite's write path (branch commitcpu): the process's one write connection (`SoloWriter`),
the driver's errors raised as SQLAlchemy's (`cubby.metadata.sqlitedriver`), and commits through
the driver statements writing what the SQLAlchemy ones wrote."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from cubby.blockstore.memory import MemoryBlockStore
from cubby.errors import Unavailable
from cubby.metadata import sqlitedriver
from cubby.metadata.engine import Database
from cubby.metadata.schema import file_revs, journal, nodes, ns_chunks
from cubby.metadata.store import open_store
from cubby.metadata.writelock import FileTurn
from cubby.model import ChunkRef, CommitRequest


def test_writers_of_one_process_take_turns_on_one_connection(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        db.write(lambda c: c.execute(text("CREATE TABLE t (n INTEGER)")))
        seen: list[int] = []
        inside = 0
        most = 0
        lock = threading.Lock()

        def one(i: int) -> None:
            def fn(c: object) -> None:
                nonlocal inside, most
                with lock:
                    inside += 1
                    most = max(most, inside)
                seen.append(id(c))
                time.sleep(0.005)
                c.execute(text("INSERT INTO t VALUES (:n)"), {"n": i})  # type: ignore[attr-defined]
                with lock:
                    inside -= 1

            db.write(fn)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert most == 1  # one transaction at a time
        assert len(set(seen)) == 1  # on the one connection
        assert db.read(lambda c: c.execute(text("SELECT count(*) FROM t")).scalar()) == 8
    finally:
        db.dispose()


def test_a_failed_write_rolls_back_and_the_next_one_runs(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        db.write(lambda c: c.execute(text("CREATE TABLE t (n INTEGER PRIMARY KEY)")))

        def fails(c: object) -> None:
            c.execute(text("INSERT INTO t VALUES (1)"))  # type: ignore[attr-defined]
            sqlitedriver.execute(c, "INSERT INTO t VALUES (?)", (2,))  # type: ignore[arg-type]
            sqlitedriver.execute(c, "INSERT INTO t VALUES (?)", (2,))  # type: ignore[arg-type]

        with pytest.raises(IntegrityError):  # the driver's error, as SQLAlchemy's
            db.write(fails)
        assert db.read(lambda c: c.execute(text("SELECT count(*) FROM t")).scalar()) == 0
        db.write(lambda c: c.execute(text("INSERT INTO t VALUES (3)")))
        assert db.read(lambda c: c.execute(text("SELECT n FROM t")).scalar()) == 3
    finally:
        db.dispose()


def test_another_process_holding_the_lock_is_waited_for(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE goes through the driver: a writer of another process (here another
    connection) holding the database's lock is waited for, as before, not an error."""
    path = tmp_path / "m.db"
    db = Database(f"sqlite:///{path}")
    try:
        db.write(lambda c: c.execute(text("CREATE TABLE t (n INTEGER)")))
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t VALUES (1)")
        releasing = threading.Event()

        def release() -> None:
            releasing.set()  # before the commit: whatever our write does after it sees this set
            other.commit()

        threading.Timer(0.3, release).start()
        db.write(lambda c: c.execute(text("INSERT INTO t VALUES (2)")))
        assert releasing.is_set()  # our write landed only once the other let go of the lock
        assert db.read(lambda c: c.execute(text("SELECT n FROM t ORDER BY rowid")).scalars().all()) == [1, 2]
        assert db.read(lambda c: c.execute(text("SELECT count(*) FROM t")).scalar()) == 2
        other.close()
    finally:
        db.dispose()


def test_a_locked_begin_is_sqlalchemys_operational_error(tmp_path: Path) -> None:
    """What `Database.write` retries: the driver's "database is locked" as `OperationalError`."""
    path = tmp_path / "m.db"
    db = Database(f"sqlite:///{path}")
    try:
        db.write(lambda c: c.execute(text("CREATE TABLE t (n INTEGER)")))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with db.writer.connect() as conn:
            sqlitedriver.execute(conn, "PRAGMA busy_timeout=10", ())
            with pytest.raises(OperationalError, match="locked"):
                sqlitedriver.execute(conn, "BEGIN IMMEDIATE", ())
        other.rollback()
        other.close()
    finally:
        db.dispose()


def test_an_invalidated_connection_is_replaced(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        first: list[object] = []
        db.write(lambda c: first.append(c))
        conn = first[0]
        conn.invalidate()  # type: ignore[attr-defined]
        assert db.write(lambda c: c.execute(text("SELECT 5")).scalar()) == 5
        later: list[object] = []
        db.write(lambda c: later.append(c))
        assert later[0] is not conn
    finally:
        db.dispose()


def test_commits_through_the_driver_write_every_row(tmp_path: Path) -> None:
    """A new file, an edit of it and a second file: the rows the SQLAlchemy statements wrote
    (path keys as bytes, NULLs where nothing was given, reference counts added up)."""
    store = open_store(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        _, token = store.create_user("u")
        p = store.authenticate(token)
        data = b"x" * 4096
        h = hashlib.sha256(data).hexdigest()
        store.ingest_chunks(p.root_ns, [(h, data)], MemoryBlockStore())
        chunk = (ChunkRef(h, len(data)),)
        first = store.commit(p.user_id, p.root_ns, CommitRequest("/A/Ä.txt", 4096, chunk, None, 1.5, None))
        assert first.entry is not None
        edit = store.commit(
            p.user_id, p.root_ns, CommitRequest("/a/ä.txt", 4096, chunk, first.entry.rev, None, 0o100755)
        )
        assert edit.entry is not None and edit.entry.node_id == first.entry.node_id
        assert edit.entry.path == "/A/Ä.txt"  # a commit never renames
        store.commit(p.user_id, p.root_ns, CommitRequest("/A/b", 4096, chunk, None, None, None))
        assert store.stat(p.root_ns, "/a/Ä.TXT").rev == edit.entry.rev
        db = Database(f"sqlite:///{tmp_path / 'm.db'}")
        try:
            with db.reader.connect() as c:
                node = c.execute(select(nodes).where(nodes.c.node_id == first.entry.node_id)).one()
                assert node.path_key == "/a/ä.txt" and node.mode == 0o100755 and node.mtime is None
                assert node.deleted is False and node.rev == edit.entry.rev
                revs = c.execute(select(file_revs.c.rev, file_revs.c.mtime).order_by(file_revs.c.rev)).all()
                assert [r.mtime for r in revs] == [1.5, None, None]
                ops = c.execute(select(journal.c.op, journal.c.path_key).order_by(journal.c.jid)).all()
                assert [o.op for o in ops][-3:] == ["add", "edit", "add"]
                assert ops[-1].path_key == "/a/b"
                assert c.execute(select(ns_chunks.c.refs).where(ns_chunks.c.hash == h)).scalar() >= 3
        finally:
            db.dispose()
    finally:
        store.close()



_HOLDER = """
import sys
from cubby.metadata.writelock import FileTurn
turn = FileTurn(sys.argv[1])
turn.take(10)
print("holding", flush=True)
sys.stdin.read()  # until the test closes our stdin (or kills us)
if len(sys.argv) > 2:
    open(sys.argv[2], "w").close()  # what the waiting writer must find when it gets its turn
turn.give()
print("done", flush=True)
"""


def _holder(lock: Path, marker: Path | None = None) -> subprocess.Popen[str]:
    """Another process holding the turn of ``lock`` until its stdin is closed."""
    args = [sys.executable, "-c", _HOLDER, str(lock)] + ([str(marker)] if marker else [])
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


def test_the_turn_between_processes_is_refused_while_held_and_free_after_a_give_or_a_kill(tmp_path: Path) -> None:
    """`FileTurn`: a writer waiting past its wait gets `Unavailable`; it is let in when the
    holder gives the turn, and at once when the holder is killed (the kernel drops its lock)."""
    lock = tmp_path / "m.db.write-lock"
    turn = FileTurn(str(lock))
    try:
        for end in ("give", "kill"):
            holder = _holder(lock)
            assert holder.stdin is not None and holder.stdout is not None
            with pytest.raises(Unavailable, match="busy"):
                turn.take(0.3)
            if end == "give":
                holder.stdin.close()
                assert holder.stdout.readline().strip() == "done"
            else:
                holder.kill()
            holder.wait()
            turn.take(10)
            turn.give()
    finally:
        turn.close()


def test_a_database_writes_only_in_its_turn_beside_the_file(tmp_path: Path) -> None:
    """Writers of an SQLite database file take the turn of ``DB.write-lock`` first: while
    another process holds it, a write does not begin, and when it runs the holder has given it."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    lock, marker = tmp_path / "m.db.write-lock", tmp_path / "given"
    db = Database(url)
    try:
        db.write(lambda c: c.execute(text("CREATE TABLE t (n INTEGER)")))
        assert lock.exists()
        holder = _holder(lock, marker)
        assert holder.stdin is not None and holder.stdout is not None
        seen: list[bool] = []

        def fn(c: object) -> None:
            seen.append(marker.exists())

        writer = threading.Thread(target=db.write, args=(fn,))
        writer.start()
        holder.stdin.close()
        assert holder.stdout.readline().strip() == "done"
        holder.wait()
        writer.join()
        assert seen == [True]
    finally:
        db.dispose()


def test_an_in_memory_database_makes_no_turn_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = Database("sqlite://")
    try:
        db.write(lambda c: c.execute(text("CREATE TABLE t (n INTEGER)")))
    finally:
        db.dispose()
    assert list(tmp_path.iterdir()) == []
