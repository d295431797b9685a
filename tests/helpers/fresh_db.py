"""A shared test database made as fresh as a first migration leaves it, in milliseconds.

Wiping a worker's database on PostgreSQL or MariaDB by dropping every table, then migrating it
again through the store's first open, costs 0.5-2.5 s a test (a dozen migrations of DDL, each
committed), and about 300 tests on those engines did it. `fresh_database` migrates a database
once per process, keeps what the migrations left (the rows they seeded, the sequence and
auto-increment positions), and for every later test deletes the rows and puts those back, in
one transaction. A database whose tables or schema revision are not the ones it migrated (a
test that dropped or downgraded it) is dropped and migrated again, so the result is the same
as before: a database at the newest schema with nothing in it but what the migrations made.

Tests that need an empty database (migrations, concurrent first starts) keep using
`cubby.metadata.schema.drop_all`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, MetaData, Table, create_engine, text

from cubby.metadata import migrate
from cubby.metadata.schema import drop_all


@dataclass
class _Fresh:
    """What the migrations left in one database: its tables, revision, seeded rows, counters."""

    tables: frozenset[str]
    version: str
    rows: dict[str, tuple[Table, list[dict[str, Any]]]] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)


_MIGRATED: dict[str, _Fresh] = {}
"""Per test process (each xdist worker has its own databases): URL -> what it looked like just
after this process migrated it."""


def fresh_database(url: str) -> None:
    """Leave the PostgreSQL or MariaDB database at ``url`` as the store's first open of an empty
    one would leave it, just before the store's own work: the newest schema, and only the rows
    the migrations wrote."""
    engine = create_engine(url)
    try:
        known = _MIGRATED.get(url)
        if known is not None:
            with engine.begin() as conn:
                reset = _reset(conn, known)
            if reset:
                if engine.dialect.name != "postgresql":
                    with engine.begin() as conn:
                        _restore_auto_increments(conn, known)
                return
        _MIGRATED.pop(url, None)
        drop_all(url)
        migrate.upgrade(engine)
        with engine.begin() as conn:
            _MIGRATED[url] = _snapshot(conn)
    finally:
        engine.dispose()


def _tables(conn: Connection) -> frozenset[str]:
    if conn.dialect.name == "postgresql":
        q = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    else:
        q = "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
    return frozenset(str(r[0]) for r in conn.execute(text(q)))


def _counters(conn: Connection) -> dict[str, Any]:
    """PostgreSQL: each sequence's (last value, whether it was used); MariaDB: each table's
    next auto-increment value."""
    if conn.dialect.name == "postgresql":
        q = "SELECT sequencename, last_value, start_value FROM pg_sequences WHERE schemaname = current_schema()"
        return {str(r[0]): (r[1], r[2]) for r in conn.execute(text(q))}
    q = "SELECT table_name, auto_increment FROM information_schema.tables WHERE table_schema = DATABASE()"
    return {str(r[0]): r[1] for r in conn.execute(text(q)) if r[1] is not None}


def _snapshot(conn: Connection) -> _Fresh:
    tables = _tables(conn)
    version = str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())
    fresh = _Fresh(tables, version, counters=_counters(conn))
    meta = MetaData()
    for name in sorted(tables):
        table = Table(name, meta, autoload_with=conn)
        rows = [dict(r._mapping) for r in conn.execute(table.select())]
        if rows:
            fresh.rows[name] = (table, rows)
    return fresh


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _reset(conn: Connection, fresh: _Fresh) -> bool:
    """Delete every row and put back the migrations' own, in ``conn``'s transaction; False (and
    nothing done) when the schema is not the one migrated."""
    if _tables(conn) != fresh.tables:
        return False
    if conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() != [fresh.version]:
        return False
    postgres = conn.dialect.name == "postgresql"
    # Rows go in any order: foreign keys are not checked for this transaction's deletes.
    conn.execute(text("SET LOCAL session_replication_role = replica" if postgres else "SET FOREIGN_KEY_CHECKS = 0"))
    try:
        for name in sorted(fresh.tables):
            conn.execute(text(f"DELETE FROM {_quote(conn, name)}"))
        for table, rows in fresh.rows.values():
            conn.execute(table.insert(), rows)
        if postgres:
            for seq, (last, start) in fresh.counters.items():
                value, used = (last, True) if last is not None else (start, False)
                conn.execute(text("SELECT setval(:s, :v, :u)"), {"s": f'"{seq}"', "v": value, "u": used})
    finally:
        if not postgres:
            conn.execute(text("SET FOREIGN_KEY_CHECKS = 1"))
    return True


def _restore_auto_increments(conn: Connection, fresh: _Fresh) -> None:
    """MariaDB keeps a table's auto-increment past deleted rows; set back those that moved (DDL,
    so after the transaction above; InnoDB takes the larger of this and the highest row)."""
    for name, now in _counters(conn).items():
        want = fresh.counters.get(name)
        if want is not None and now != want:
            conn.execute(text(f"ALTER TABLE {_quote(conn, name)} AUTO_INCREMENT = {int(want)}"))


__all__ = ["fresh_database"]
