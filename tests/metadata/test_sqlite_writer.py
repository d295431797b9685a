"""SQLite's write path (branch commitcpu): the process's one write connection (`SoloWriter`),
the driver's errors raised as SQLAlchemy's (`cubby.metadata.sqlitedriver`), and commits through
the driver statements writing what the SQLAlchemy ones wrote."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from cubby.blockstore.memory import MemoryBlockStore
from cubby.metadata import sqlitedriver
from cubby.metadata.engine import Database
from cubby.metadata.schema import file_revs, journal, nodes, ns_chunks
from cubby.metadata.store import open_store
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
import sys, time
from cubby.metadata.engine import Database
from sqlalchemy import text
db = Database(sys.argv[1])
def hold(c):
    c.execute(text("INSERT INTO t VALUES (1)"))
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)
db.write(hold)
print("done", flush=True)
"""


def test_writers_of_two_processes_take_turns_through_the_file_beside_the_database(tmp_path: Path) -> None:
    """Another process's writer waits on the turn file (`cubby.metadata.writelock`), not in
    SQLite's busy handler: refused with `Unavailable` when the holder keeps it past the wait,
    let in when the holder commits, and when a holder is killed the turn is free at once."""
    import subprocess
    import sys

    from cubby.errors import Unavailable

    url = f"sqlite:///{tmp_path / 'm.db'}"
    db = Database(url)
    try:
        db.write(lambda c: c.execute(text("CREATE TABLE t (n INTEGER)")))
        assert (tmp_path / "m.db.write-lock").exists()
        assert db._solo is not None
        for end in ("commit", "kill"):
            holder = subprocess.Popen(
                [sys.executable, "-c", _HOLDER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert holder.stdout is not None and holder.stdin is not None
            assert holder.stdout.readline().strip() == "holding"
            db._solo.wait = 0.3
            with pytest.raises(Unavailable, match="busy"):
                db.write(lambda c: c.execute(text("INSERT INTO t VALUES (2)")))
            if end == "commit":
                holder.stdin.close()
                assert holder.stdout.readline().strip() == "done"
            else:
                holder.kill()
            holder.wait()
            db._solo.wait = 60.0
            db.write(lambda c: c.execute(text("INSERT INTO t VALUES (2)")))
        rows = db.read(lambda c: sorted(r[0] for r in c.execute(text("SELECT n FROM t"))))
        assert rows == [1, 2, 2]  # the killed holder's row was rolled back
    finally:
        db.dispose()


def test_an_in_memory_database_has_no_turn_file(tmp_path: Path) -> None:
    db = Database("sqlite://")
    try:
        assert db._solo is not None and db._solo.turn is None
    finally:
        db.dispose()
