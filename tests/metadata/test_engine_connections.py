"""Pooled connections that the database dropped: the pool does not ping before lending one
(`Database._run`), so the first transaction on a dead connection fails and runs again, once,
on a new one; nobody sees the error."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from cubby.metadata.engine import Database


def kill_other_connections(url: str, db: Database) -> int:
    """End every connection of ``db``'s pool from another session, as a database restart or an
    idle timeout would; the number ended."""
    with Database(url).writer.connect() as admin:
        if db.is_mysql:
            mine = admin.execute(text("SELECT CONNECTION_ID()")).scalar()
            ids = admin.execute(
                text("SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> :me"), {"me": mine}
            ).scalars().all()
            for i in ids:
                admin.execute(text(f"KILL {int(i)}"))
            return len(ids)
        return len(admin.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )).all())


def test_a_dropped_connection_is_replaced_without_an_error(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite has no connection to drop")
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
