"""Database engines and transactions, with each engine's quirks in one place.

- SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``: in WAL mode only
  FULL fsyncs the log on every commit, and nothing acknowledged may be lost on power failure.
  Writers open their transaction with ``BEGIN IMMEDIATE`` so that two writers never both
  read and then deadlock upgrading to a write lock; readers use a second engine with plain
  deferred transactions so that they never wait for a writer.
- PostgreSQL and MariaDB run at READ COMMITTED: every statement sees what committed before it,
  which the garbage collector relies on after it has locked a row (see store.py), and MariaDB
  takes no gap locks.
- URLs are taken as people type them (`database_url`): ``postgresql://`` and ``postgres://``
  use psycopg, ``mysql://`` and ``mariadb://`` use PyMySQL, the drivers cubby installs;
  anything else is refused with one line that says what is supported.
- Deadlocks and serialization failures are retried a few times by `Database.write`, since a
  transaction that lost such a race changed nothing and may simply run again.
- A `write` or `read` called on a thread that is already inside a `write` of the same
  `Database` joins that transaction instead of opening a second one. The chunk index
  (`cubby.metadata.chunk_index`) relies on this: when the garbage collector or an upload
  calls into the block store while holding row locks, the index rows change in the same
  transaction (on SQLite a second writer would wait for the first forever).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, insert
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from cubby.errors import CubbyError, InsufficientStorage, Unavailable
from cubby.metadata import sqlitedriver
from cubby.metadata.writelock import FileTurn

T = TypeVar("T")

SQLITE_CACHE_KIB = 32 * 1024
"""Page cache of each SQLite connection, in KiB (SQLite's default is 2,000). A batch of 1,000
commits or uploads inserts rows into a dozen B-trees keyed by random chunk hashes (``blocks``,
``chunk_index``, ``ns_chunks`` and its index by hash) and by path; once the database outgrows
2 MB, most of those pages left the default cache between two batches and came back through a
``read`` of the WAL or of the file, each page copied again. Measured in process on 20,000 files
of 4 KiB (2026-12-03): 78 us of SQLite time per file with the default, 62-65 with 16-64 MiB.
The cache only holds pages that were read: a small database costs no more memory than before."""


class UnsupportedDatabase(CubbyError):
    """A metadata database URL that cubby cannot open (a typo, or an engine it does not support)."""

    code = "unsupported_database"
    status = 400


_DRIVERS = {
    "sqlite": ("sqlite", {"pysqlite"}),
    "postgresql": ("postgresql+psycopg", {"psycopg"}),
    "postgres": ("postgresql+psycopg", {"psycopg"}),
    "mysql": ("mysql+pymysql", {"pymysql"}),
    "mariadb": ("mariadb+pymysql", {"pymysql"}),
}
"""Scheme -> (SQLAlchemy driver name, the drivers cubby installs for it)."""
SUPPORTED = "sqlite:///PATH, postgresql://USER@HOST/DB, or mysql://USER@HOST/DB (mariadb:// too)"


def database_url(url: str | URL) -> URL:
    """The SQLAlchemy URL for a metadata database URL as a person types it: a bare scheme
    gets the driver cubby installs (``postgres://`` is the spelling many hosts print), one
    that names that driver is kept, and anything else is `UnsupportedDatabase`."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        scheme = str(url).partition("://")[0] if "://" in str(url) else ""
        raise UnsupportedDatabase(
            f"cannot read the database URL{f' ({scheme}://...)' if scheme else ''}: use {SUPPORTED}"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    known = _DRIVERS.get(backend)
    if known is None or (driver and driver not in known[1]):
        raise UnsupportedDatabase(f"cubby cannot use a {parsed.drivername}:// database: use {SUPPORTED}")
    return parsed.set(drivername=known[0] if not driver else parsed.drivername)


_RETRYABLE_CODES = {"40001", "40P01", "1213", "1205", "55P03", "26000"}
"""Serialization failures, deadlocks and lock timeouts; and PostgreSQL's invalid_sql_statement_name:
a statement `cubby.metadata.pgtrips` prepared was deallocated under it (by psycopg's rollback
of the connection) after it checked, and the transaction rolled back; run again, it prepares it."""


def _is_retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _RETRYABLE_CODES:
        return True
    args = getattr(orig, "args", ())
    if args and str(args[0]) in _RETRYABLE_CODES:
        return True
    text = str(orig).lower()
    return "database is locked" in text or "deadlock" in text


_DISK_FULL_CODES = {"53100", "1021", "1114"}
"""PostgreSQL's disk_full, MariaDB's ER_DISK_FULL and ER_RECORD_FILE_FULL."""


def _is_disk_full(exc: DBAPIError) -> bool:
    """Whether the database refused a write for lack of space (SQLite: SQLITE_FULL, code 13)."""
    orig = exc.orig
    if getattr(orig, "sqlite_errorcode", None) == 13:
        return True
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    args = getattr(orig, "args", ())
    if code in _DISK_FULL_CODES or (args and str(args[0]) in _DISK_FULL_CODES):
        return True
    text = str(orig).lower()
    return "database or disk is full" in text or "no space left on device" in text


DATABASE_FULL = (
    "the server is out of disk space for its database; nothing was changed. "
    "Its administrator must free space before it accepts changes again"
)


class _ReadSession:
    """The read transaction of one `Database.reading` block, opened at its first read."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.conn: Connection | None = None
        self.start = 0.0

    def run(self, fn: Callable[[Connection], T]) -> T:
        if self.conn is not None:
            try:
                return fn(self.conn)
            except DBAPIError:
                self.close(ok=False)  # the transaction may be aborted: a later read opens anew
                raise
        for attempt in range(2):
            self.start = time.perf_counter()
            self.conn = self.db.reader.connect()
            self.conn.begin()
            try:
                return fn(self.conn)
            except DBAPIError as exc:  # a dropped pooled connection: once more (see Database._run)
                self.close(ok=False)
                if attempt or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def close(self, *, ok: bool = True) -> None:
        """End the transaction (committed if ``ok``, else rolled back) and return the connection."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            if ok:
                conn.commit()
        finally:
            conn.close()
        if ok and self.db.observe is not None:
            self.db.observe("read", time.perf_counter() - self.start)


class SoloWriter:
    """SQLite: the process's one write connection, lent to one write transaction at a time.

    Why. SQLite runs one write transaction at a time anyway (``BEGIN IMMEDIATE`` takes the
    database's write lock, and a second writer waits in the driver's busy handler), so a pool
    of write connections buys nothing; checking one out and back in, with SQLAlchemy's
    bookkeeping around it, cost ~16% of an in-process single-file commit's CPU. Here writers
    of this process queue on a lock instead, and the connection stays open between
    transactions. Other processes (a `cubby` command beside the server) still meet the
    database's own lock. A connection SQLAlchemy invalidated (it failed) is replaced by the
    next transaction."""

    def __init__(self, engine: Engine, wait: float = 60.0, turn: FileTurn | None = None) -> None:
        self.engine = engine
        self.wait = wait
        """Seconds a writer waits for its turn (as long as the driver's busy timeout)."""
        self.turn = turn
        """The turn between processes (`cubby.metadata.writelock`), taken after this process's
        own lock; None for a database only this process opens (in memory)."""
        self._lock = threading.Lock()
        self._conn: Connection | None = None

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """The connection, in a new transaction committed at the end (rolled back on a raise)."""
        start = time.monotonic()
        if not self._lock.acquire(timeout=self.wait):
            raise Unavailable("the metadata database is busy; retry shortly")
        try:
            if self.turn is not None:
                self.turn.take(max(0.0, self.wait - (time.monotonic() - start)))
            try:
                conn = self._conn
                if conn is None or conn.closed or conn.invalidated:
                    if conn is not None:
                        conn.close()
                    conn = self._conn = self.engine.connect()
                with conn.begin():
                    yield conn
            finally:
                if self.turn is not None:
                    self.turn.give()
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            if self.turn is not None:
                self.turn.close()
                self.turn = None


class KeptConnections:
    """PostgreSQL and MariaDB: transactions on connections kept out of the pool between them.

    Why. Checking a connection out of SQLAlchemy's pool and back in (the pool's bookkeeping,
    its events, the reset on return) cost more CPU than a round trip: an ad hoc loop of
    one-statement transactions took 380-500 us through the pool and 230-330 us on a kept
    connection (loaded machine, load average 15). Up to ``keep`` connections that ended a
    transaction cleanly wait here for the next one; more at once take theirs from the pool
    and give it back. They stay counted by the pool as checked out, so its limits still bound
    the connections. A connection SQLAlchemy invalidated (it failed) is closed, not kept, and
    `forget` closes every kept one when one was found dead: a database restart ends them all,
    and `Database._run` then runs the transaction again on one from the pool, which that
    invalidation has recycled."""

    def __init__(self, engine: Engine, keep: int) -> None:
        self.engine = engine
        self.keep = keep
        self._free: list[Connection] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a new transaction, committed at the end (rolled back on a raise)."""
        with self._lock:
            conn = self._free.pop() if self._free else None
        if conn is None:
            conn = self.engine.connect()
        try:
            with conn.begin():
                yield conn
        finally:
            if conn.invalidated or conn.closed or conn.in_transaction():
                conn.close()
            else:
                with self._lock:
                    kept = len(self._free) < self.keep
                    if kept:
                        self._free.append(conn)
                if not kept:
                    conn.close()

    def forget(self) -> None:
        """Close every kept connection (one was found dead: the others probably are too)."""
        with self._lock:
            free, self._free = self._free, []
        for conn in free:
            with contextlib.suppress(Exception):
                conn.close()


def _file_turn(url: URL) -> FileTurn | None:
    """The writers' turn beside an SQLite database file (`cubby.metadata.writelock`); None for
    an in-memory database, or when no file can be made beside it (its writers then meet in
    SQLite's busy handler, as before)."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:") or url.query.get("mode") == "memory":
        return None
    try:
        return FileTurn(f"{database}.write-lock")
    except OSError:
        return None


class Database:
    """A pair of engines (write, read) on one metadata database, and transaction helpers."""

    def __init__(self, url: str | URL, *, pool_size: int = 10) -> None:
        self.observe: Callable[[str, float], None] | None = None
        """Called with ("read" or "write", seconds) after each transaction (server metrics)."""
        self.url = database_url(url)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            self.writer = self._sqlite_engine(self.url, immediate=True)
            self.reader = self._sqlite_engine(self.url, immediate=False)
            self._solo: SoloWriter | None = SoloWriter(self.writer, turn=_file_turn(self.url))
        else:
            # No pre-ping: a dead connection is found by its first statement and replaced (`_run`).
            kw: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 20}
            self.writer = create_engine(self.url, isolation_level="READ COMMITTED", **kw)
            self.reader = self.writer
            self._solo = None
        self._kept = KeptConnections(self.writer, pool_size) if self._solo is None else None
        self._current = threading.local()
        self._upserts: dict[tuple[str, str, tuple[str, ...]], Any] = {}
        self._driver_sql: dict[tuple[Any, ...], str | None] = {}
        """SQLite: `sqlitedriver.insert_sql` texts by (table, columns, kind), built once each."""

    @staticmethod
    def _sqlite_engine(url: URL, *, immediate: bool) -> Engine:
        # No rollback when a connection goes back to the pool: the driver is in autocommit
        # mode (below), every transaction is our explicit BEGIN, and SQLAlchemy's `Connection`
        # ends it (COMMIT, or ROLLBACK on an error) before it returns the connection; the
        # redundant ROLLBACK cost ~5% of an in-process commit's CPU.
        # ``cached_statements``: prepared statements kept per connection (Python's default is
        # 128): each table's inserts of many rows are up to eleven texts of their own
        # (`sqlitedriver.statement_sizes`), and preparing a long one again costs a millisecond.
        engine = create_engine(
            url, connect_args={"timeout": 60, "check_same_thread": False, "cached_statements": 512},
            pool_reset_on_return=None,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control away from the driver so BEGIN is ours to issue.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            cur.close()

        begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Straight to the driver (errors raised as SQLAlchemy's, so "database is locked"
            # is retried by `write`): `exec_driver_sql` cost ~10% of an in-process commit.
            sqlitedriver.execute(conn, begin, ())

        return engine

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_mysql(self) -> bool:
        return self.dialect in ("mysql", "mariadb")

    def write(self, fn: Callable[[Connection], T], *, attempts: int = 8) -> T:
        """Run ``fn`` in one write transaction, retrying it when the database reports a
        deadlock, a serialization failure or a lock timeout (the failed attempt changed nothing),
        and once when the pooled connection turns out to be dead before the transaction
        reached its COMMIT (`_run`). Inside another `write` on this thread, ``fn`` joins that
        transaction."""
        joined: Connection | None = getattr(self._current, "conn", None)
        if joined is not None:
            return fn(joined)
        for attempt in range(attempts):
            start = time.perf_counter()
            try:
                result = self._run(self.writer, fn, joinable=True)
                if self.observe is not None:
                    self.observe("write", time.perf_counter() - start)
                return result
            except (OperationalError, DBAPIError) as exc:
                if _is_disk_full(exc):  # the transaction rolled back: nothing was written
                    raise InsufficientStorage(DATABASE_FULL) from exc
                if not _is_retryable(exc) or attempt == attempts - 1:
                    if _is_retryable(exc):
                        raise Unavailable("the metadata database is busy; retry shortly") from exc
                    raise
                time.sleep(min(0.5, 0.005 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one read transaction (a consistent snapshot on SQLite and MariaDB);
        inside a `write` on this thread, in that transaction (so it sees its own changes);
        inside `reading`, in the session's one read transaction."""
        joined: Connection | None = getattr(self._current, "conn", None)
        if joined is not None:
            return fn(joined)
        session: _ReadSession | None = getattr(self._current, "session", None)
        if session is not None:
            return session.run(fn)
        start = time.perf_counter()
        result = self._run(self.reader, fn, joinable=False)
        if self.observe is not None:
            self.observe("read", time.perf_counter() - start)
        return result

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Within, on this thread, every `read` joins one read transaction, opened by the first
        (none if nothing reads): a request that authenticates and then reads opens one
        transaction, not three. Inside a `write` or another `reading`, nothing changes. At
        READ COMMITTED (PostgreSQL, MariaDB) each statement sees what committed before it, as
        in separate transactions; on SQLite the reads share one snapshot."""
        if getattr(self._current, "conn", None) is not None or getattr(self._current, "session", None) is not None:
            yield
            return
        session = _ReadSession(self)
        self._current.session = session
        try:
            yield
        finally:
            self._current.session = None
            session.close()

    def writing(self) -> bool:
        """Whether this thread is inside a `write` of this database (a new `write` would join it)."""
        return getattr(self._current, "conn", None) is not None

    def commit_sent(self) -> None:
        """Note that the running `write` transaction's COMMIT is on its way inside ``fn``
        (`cubby.metadata.pgscript.run_and_commit`): from here on a lost connection leaves its
        outcome unknown, so `_run` raises instead of running ``fn`` again, as for a COMMIT
        sent at the end."""
        self._current.commit_sent = True

    def _run(self, engine: Engine, fn: Callable[[Connection], T], *, joinable: bool) -> T:
        """``fn`` in one transaction of ``engine``, run a second time on a new connection if
        the first one's connection was dead before the COMMIT was sent.

        The pool does not ping a connection before lending it (``pool_pre_ping`` cost one
        round trip per transaction, on every request): a connection the database dropped
        (a restart, an idle timeout) fails on its first statement instead; SQLAlchemy then
        invalidates it and every older one in the pool. Nothing committed (PostgreSQL and
        MariaDB roll back a transaction whose connection is gone), so running ``fn`` again
        is safe, as for a deadlock. A connection lost *during* the COMMIT is not retried: the
        outcome is unknown, and the error goes to the client like a lost reply."""
        for attempt in range(2):
            committing = False
            kept = self._kept if engine is self.writer else None
            self._current.commit_sent = False
            try:
                solo = self._solo if engine is self.writer else None
                with solo.begin() if solo is not None else kept.begin() if kept is not None else engine.begin() as conn:
                    if joinable:
                        self._current.conn = conn
                    try:
                        result = fn(conn)
                    finally:
                        if joinable:
                            self._current.conn = None
                    committing = True
                return result
            except DBAPIError as exc:
                if exc.connection_invalidated and kept is not None:
                    kept.forget()
                if attempt or committing or self._current.commit_sent or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def insert_ignore(self, conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
        """INSERT rows, skipping any whose primary key exists (each engine spells it its own way)."""
        if not rows:
            return
        if self.is_sqlite:
            if self._driver_insert(conn, table, rows, ignore=True):
                return
            conn.execute(insert(table).prefix_with("OR IGNORE"), rows)
        elif self.is_mysql:
            conn.execute(insert(table).prefix_with("IGNORE"), rows)
        else:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(pg_insert(table).on_conflict_do_nothing(), rows)

    def insert_or_add(
        self, conn: Connection, table: Any, rows: list[dict[str, Any]], *, add: str, also: tuple[str, ...] = ()
    ) -> None:
        """INSERT rows; where the primary key exists, add the row's ``add`` column to the
        stored one and set its ``also`` columns: one upsert statement per engine's spelling,
        where an INSERT IGNORE then an UPDATE took two. Rows must have distinct keys. The
        statement is built once per table and columns (building it cost more than running it)."""
        if not rows:
            return
        if self.is_sqlite and self._driver_insert(conn, table, rows, add=add, also=also):
            return
        key = (table.name, add, also)
        stmt = self._upserts.get(key)
        if stmt is None:
            stmt = self._upserts[key] = self._upsert(table, add, also)
        conn.execute(stmt, rows[0] if len(rows) == 1 else rows)

    def _driver_insert(
        self, conn: Connection, table: Any, rows: list[dict[str, Any]], *, ignore: bool = False,
        add: str | None = None, also: tuple[str, ...] = (),
    ) -> bool:
        """SQLite: `insert_ignore` or `insert_or_add` of ``rows`` (all with the first one's
        columns) as fixed text through the driver (`cubby.metadata.sqlitedriver.insert_sql`,
        which says when that is not possible: then False, and nothing was done). A batch of
        uploads writes a row per chunk into several tables; through SQLAlchemy, binding the
        rows of a 1,000-chunk batch cost 5-10 times SQLite's own work on them."""
        columns = tuple(rows[0])
        key = (table.name, columns, ignore, add, also)
        if key not in self._driver_sql:
            self._driver_sql[key] = sqlitedriver.insert_sql(table, columns, ignore=ignore, add=add, also=also)
        sql = self._driver_sql[key]
        if sql is None:
            return False
        sqlitedriver.executemany(conn, sql, sqlitedriver.rows_of(rows, columns))
        return True

    def _upsert(self, table: Any, add: str, also: tuple[str, ...]) -> Any:
        stmt: Any
        if self.is_mysql:
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            stmt = mysql_insert(table)
            new = stmt.inserted
            stmt = stmt.on_duplicate_key_update({add: table.c[add] + new[add], **{c: new[c] for c in also}})
        else:
            from sqlalchemy.dialects import postgresql, sqlite

            stmt = (sqlite.insert if self.is_sqlite else postgresql.insert)(table)
            new = stmt.excluded
            stmt = stmt.on_conflict_do_update(
                index_elements=list(table.primary_key.columns),
                set_={add: table.c[add] + new[add], **{c: new[c] for c in also}},
            )
        return stmt

    def dispose(self) -> None:
        if self._solo is not None:
            self._solo.close()
        if self._kept is not None:
            self._kept.forget()
        self.writer.dispose()
        if self.reader is not self.writer:
            self.reader.dispose()
