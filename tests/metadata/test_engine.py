"""`Database` on each engine: pooled connections that the database dropped (the pool does not
ping before lending one, `Database._run`, so the first transaction on a dead connection fails
and runs again, once, on a new one; nobody sees the error), and the one-statement upsert."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from cubby.metadata.engine import Database
from tests.conftest import db_url_for


def kill_other_connections(url: str, db: Database) -> int:
    """End every connection of ``db``'s pool from another session, as a database restart or an
    idle timeout would; the number ended."""
    with Database(url).writer.connect() as admin:
        if db.is_mysql:
            mine = admin.execute(text("SELECT CONNECTION_ID()")).scalar()
            ids = (
                admin.execute(
                    text("SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> :me"),
                    {"me": mine},
                )
                .scalars()
                .all()
            )
            killed = 0
            for i in ids:
                try:
                    admin.execute(text(f"KILL {int(i)}"))
                    killed += 1
                except OperationalError as exc:
                    # 1094 "Unknown thread id": the connection ended on its own between the
                    # listing and the KILL (seen once in CI); anything else is a real failure.
                    if exc.orig is None or exc.orig.args[0] != 1094:
                        raise
                    admin.rollback()
            return killed
        return len(
            admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).all()
        )


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])  # SQLite has no connection to drop
def test_a_dropped_connection_is_replaced_without_an_error(
    engine: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    db_url = db_url_for(engine, tmp_path_factory)
    db = Database(db_url, pool_size=2)
    try:
        assert db.read(lambda c: c.execute(text("SELECT 1")).scalar()) == 1
        assert db.write(lambda c: c.execute(text("SELECT 2")).scalar()) == 2
        assert kill_other_connections(db_url, db) >= 1
        assert db.read(lambda c: c.execute(text("SELECT 3")).scalar()) == 3
        kill_other_connections(db_url, db)
        runs = []

        def counted(c: object) -> int:
            runs.append(1)
            return int(c.execute(text("SELECT 4")).scalar())  # type: ignore[attr-defined]

        assert db.write(counted) == 4
        assert len(runs) == 2  # the first run met the dead connection, nothing committed
    finally:
        db.dispose()


def test_insert_or_add_inserts_new_keys_and_adds_to_existing_ones(db_url: str) -> None:
    from cubby.metadata.schema import ns_chunks
    from cubby.metadata.store import open_store

    open_store(db_url).close()  # the schema
    db = Database(db_url)
    try:

        def add(rows: list[tuple[str, int, float]]) -> None:
            db.write(
                lambda c: db.insert_or_add(
                    c,
                    ns_chunks,
                    [{"ns_id": 7, "hash": h, "refs": n, "touched_at": t} for h, n, t in rows],
                    add="refs",
                    also=("touched_at",),
                )
            )

        add([("a" * 64, 1, 1.0), ("b" * 64, 2, 1.0)])
        add([("b" * 64, 3, 2.0), ("c" * 64, 1, 2.0)])
        got = db.read(
            lambda c: sorted(
                (r.hash[:1], r.refs, r.touched_at)
                for r in c.execute(ns_chunks.select().where(ns_chunks.c.ns_id == 7))
            )
        )
        assert got == [("a", 1, 1.0), ("b", 5, 2.0), ("c", 1, 2.0)]
    finally:
        db.dispose()


def test_reads_inside_reading_share_one_transaction(db_url: str) -> None:
    db = Database(db_url)
    seen: list[str] = []
    db.observe = lambda kind, _seconds: seen.append(kind)
    try:
        with db.reading():
            first = db.read(lambda c: c.connection.dbapi_connection)
            second = db.read(lambda c: c.connection.dbapi_connection)
            assert first is second
            assert seen == []  # still open
        assert seen == ["read"]
        with db.reading():
            pass  # nothing read: no transaction at all
        assert seen == ["read"]
        db.read(lambda c: c.execute(text("SELECT 1")).scalar())
        assert seen == ["read", "read"]
    finally:
        db.dispose()


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_a_kept_connection_starts_each_transaction_clean(engine: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Transactions on PostgreSQL and MariaDB reuse connections kept out of the pool
    (`KeptConnections`): one whose transaction failed (a statement error aborts it on
    PostgreSQL) or raised serves the next transaction as if new."""
    from sqlalchemy.exc import DBAPIError

    db = Database(db_url_for(engine, tmp_path_factory), pool_size=1)
    try:
        with pytest.raises(DBAPIError):
            db.write(lambda c: c.execute(text("SELECT * FROM no_such_table_here")).all())
        assert db.write(lambda c: c.execute(text("SELECT 5")).scalar()) == 5

        def fails(c: object) -> None:
            c.execute(text("SELECT 6"))  # type: ignore[attr-defined]
            raise ValueError("the caller's own error")

        with pytest.raises(ValueError):
            db.write(fails)
        assert db.read(lambda c: c.execute(text("SELECT 7")).scalar()) == 7
        assert db.write(lambda c: c.execute(text("SELECT 8")).scalar()) == 8
    finally:
        db.dispose()


def test_insert_ignore_keeps_the_first_row_of_a_key(db_url: str) -> None:
    """The one statement each engine spells (on SQLite, text sent to the driver: see below)."""
    from cubby.metadata.schema import blocks
    from cubby.metadata.store import open_store

    open_store(db_url).close()  # the schema
    db = Database(db_url)
    try:
        rows = lambda pairs: [{"hash": h * 64, "size": n, "touched_at": 1.0} for h, n in pairs]  # noqa: E731
        db.write(lambda c: db.insert_ignore(c, blocks, rows([("a", 1), ("b", 2)])))
        db.write(lambda c: db.insert_ignore(c, blocks, rows([("b", 20), ("c", 3)])))
        db.write(lambda c: db.insert_ignore(c, blocks, rows([("d", 4)])))
        got = db.read(lambda c: sorted((r.hash[:1], r.size) for r in c.execute(blocks.select())))
        assert got == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
    finally:
        db.dispose()


def test_sqlite_sends_only_plain_columns_to_the_driver_as_text() -> None:
    """Rows of columns whose values need no conversion go to the driver as fixed text; a
    column SQLAlchemy converts (a path key to bytes, a boolean) or a default it would fill in
    leaves the statement to SQLAlchemy."""
    from cubby.metadata import sqlitedriver
    from cubby.metadata.schema import blocks, nodes, ns_chunks

    assert sqlitedriver.insert_sql(blocks, ("hash", "size", "touched_at"), ignore=True) == (
        "INSERT OR IGNORE INTO blocks (hash, size, touched_at) VALUES (?, ?, ?)"
    )
    upsert = sqlitedriver.insert_sql(ns_chunks, ("ns_id", "hash", "refs", "touched_at"), add="refs", also=("touched_at",))
    assert upsert == sqlitedriver.UPSERT_REFS
    assert sqlitedriver.insert_sql(ns_chunks, ("ns_id", "hash", "touched_at"), ignore=True) is None  # refs' default
    assert sqlitedriver.insert_sql(nodes, sqlitedriver.NODE_KEYS, ignore=True) is None  # path keys are converted


def test_sqlite_connections_keep_a_larger_page_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every SQLite connection, writer's and reader's, holds `SQLITE_CACHE_KIB` of pages (a
    negative ``cache_size`` is KiB), not SQLite's default of 2,000 KiB."""
    from cubby.metadata.engine import SQLITE_CACHE_KIB

    db = Database(db_url_for("sqlite", tmp_path_factory))
    try:
        pragma = "PRAGMA cache_size"
        assert db.write(lambda c: c.exec_driver_sql(pragma).scalar()) == -SQLITE_CACHE_KIB
        assert db.read(lambda c: c.exec_driver_sql(pragma).scalar()) == -SQLITE_CACHE_KIB
    finally:
        db.dispose()
