"""SQLite's bulk statements as few steps (`cubby.metadata.sqlitedriver`): ``sqlite3`` lets go
of the GIL around each step and must win it back, up to the switch interval later while
another thread runs Python, so a batch of rows goes as a few multi-row INSERTs and the hot
reads of names and numbers come back as one row. These tests count the statements SQLite ran
(its trace callback) and check that what lands, and what is read, is what a statement per row
wrote and read."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from cubby.metadata import sqlitedriver
from cubby.metadata.engine import Database
from cubby.metadata.migrate import upgrade
from cubby.metadata.schema import blocks, chunk_index


def _name(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(d.writer)
    yield d
    d.dispose()


def _traced(db: Database, fn: object) -> list[str]:
    """Run ``fn(conn)`` in a write transaction; the statements SQLite ran meanwhile."""
    ran: list[str] = []

    def run(conn: object) -> None:
        driver = conn.connection.driver_connection  # type: ignore[attr-defined]
        driver.set_trace_callback(ran.append)
        try:
            fn(conn)  # type: ignore[operator]
        finally:
            driver.set_trace_callback(None)

    db.write(run)
    return [s for s in ran if s.lstrip().upper().startswith(("INSERT", "SELECT", "UPDATE"))]


@given(st.integers(min_value=0, max_value=5000), st.sampled_from([1, 7, 8, 63, 64, 512, 700, 1024]))
def test_statement_sizes_cover_every_row_in_a_few_sizes(count: int, most: int) -> None:
    sizes = list(sqlitedriver.statement_sizes(count, most))
    assert sum(sizes) == count
    assert all(1 <= s <= most for s in sizes)
    assert all(s & (s - 1) == 0 for s in sizes)  # powers of two: a few texts per table, whatever the count
    largest = max(sizes, default=1)
    assert len(sizes) <= count // largest + largest.bit_length()  # the rest: each smaller size once at most


def test_a_thousand_rows_insert_in_a_few_statements_and_all_land(db: Database) -> None:
    rows = [(_name(i), i + 1, 1.5) for i in range(1000)]
    sql = sqlitedriver.insert_sql(blocks, ("hash", "size", "touched_at"), ignore=True)
    assert sql is not None
    ran = _traced(db, lambda c: sqlitedriver.executemany(c, sql, rows))
    assert len(ran) == 6  # 512 + 256 + 128 + 64 + 32 + 8, not 1,000
    got = db.read(lambda c: sorted((r.hash, r.size) for r in c.execute(blocks.select())))
    assert got == sorted((h, n) for h, n, _ in rows)


def test_many_row_upserts_add_as_one_row_at_a_time_did(db: Database) -> None:
    """``ON CONFLICT ... DO UPDATE`` applies row by row within one statement: a key already
    stored is added to, and a key twice in one batch is added to by its second row."""
    first = [(1, _name(i), 1, 1.0) for i in range(100)]
    db.write(lambda c: sqlitedriver.executemany(c, sqlitedriver.UPSERT_REFS, first))
    again = [(1, _name(i), 2, 2.0) for i in range(50, 150)] + [(1, _name(149), 5, 3.0)]
    db.write(lambda c: sqlitedriver.executemany(c, sqlitedriver.UPSERT_REFS, again))
    got = dict(db.read(lambda c: [tuple(r) for r in c.execute(text("SELECT hash, refs FROM ns_chunks"))]))
    assert got == {_name(i): 1 if i < 50 else 3 if i < 100 else 2 if i < 149 else 7 for i in range(150)}
    assert db.read(lambda c: c.execute(text("SELECT max(touched_at) FROM ns_chunks")).scalar()) == 3.0


def test_a_bad_row_in_a_batch_fails_the_transaction_as_sqlalchemy_does(db: Database) -> None:
    rows = [(1, i, 1, f"f{i}", f"/f{i}", f"/f{i}".encode(), "file", 1, None, 0, None, None, 0, None, None, None, None)
            for i in range(1, 100)]
    rows.append(rows[10])  # the same node twice
    with pytest.raises(IntegrityError):
        db.write(lambda c: sqlitedriver.executemany(c, sqlitedriver.INSERT_NODES, rows))
    assert db.read(lambda c: c.execute(text("SELECT count(*) FROM nodes WHERE ns_id = 1")).scalar()) == 0


def test_statements_other_than_a_plain_insert_still_run_once_a_row(db: Database) -> None:
    db.write(lambda c: sqlitedriver.executemany(
        c, "INSERT INTO blocks (hash, size, touched_at) SELECT ?, ?, ?", [(_name(i), i, 1.0) for i in range(5)]
    ))
    ran = _traced(db, lambda c: sqlitedriver.executemany(
        c, "UPDATE blocks SET size = ? WHERE hash = ?", [(9, _name(i)) for i in range(5)]
    ))
    assert len(ran) == 5
    assert db.read(lambda c: c.execute(text("SELECT sum(size) FROM blocks")).scalar()) == 45


def test_chunk_reads_come_back_as_one_row_with_the_rows_a_plain_select_finds(db: Database) -> None:
    stored = [(_name(i), f"{i:040x}", i * 10, i + 3, i + 4) for i in range(600)]
    sql = sqlitedriver.insert_sql(chunk_index, sqlitedriver.LOCATION_COLUMNS, ignore=True)
    assert sql is not None
    db.write(lambda c: sqlitedriver.executemany(c, sql, stored))
    asked = [_name(i) for i in range(0, 1200, 2)]  # half of them stored
    found: list[list[str]] = []
    ran = _traced(db, lambda c: found.extend(sqlitedriver.chunk_rows(c, "chunk_index", sqlitedriver.LOCATION_COLUMNS, asked)))
    assert len(ran) == 1
    plain = db.read(lambda c: [
        [str(v) for v in r] for r in c.exec_driver_sql(sqlitedriver.in_sql(
            "SELECT hash, pack, pos, stored_len, plain_len FROM chunk_index", "hash", len(asked)), tuple(asked))
    ])
    assert sorted(found) == sorted(plain)
    assert len(found) == 300
    assert db.read(lambda c: sqlitedriver.chunk_rows(c, "chunk_index", ("hash",), [_name(5000)])) == []


def test_the_commit_check_reads_held_chunks_in_one_row(db: Database) -> None:
    """`held_chunks`: stored chunks with their sizes, and whether one of the namespaces holds
    each; a chunk not stored is left out, as from the plain query."""
    db.write(lambda c: sqlitedriver.executemany(
        c, "INSERT INTO blocks (hash, size, touched_at) VALUES (?, ?, ?)", [(_name(i), 100 + i, 1.0) for i in range(10)]
    ))
    db.write(lambda c: sqlitedriver.executemany(
        c, sqlitedriver.UPSERT_REFS, [(7, _name(i), 1, 1.0) for i in range(0, 10, 3)] + [(8, _name(1), 1, 1.0)]
    ))
    got: list[tuple[str, int, bool]] = []
    ran = _traced(db, lambda c: got.extend(sqlitedriver.held_chunks(c, [7, 9], [_name(i) for i in range(12)])))
    assert len(ran) == 1
    assert sorted(got) == sorted((_name(i), 100 + i, i % 3 == 0) for i in range(10))


def test_a_library_allowing_fewer_parameters_gets_smaller_statements(db: Database) -> None:
    """A statement never carries more parameters than the library allows (builds before
    SQLite 3.32 allowed 999): 1,000 rows of 17 columns go 32 to a statement there (58 would
    fit; sizes are powers of two)."""
    rows = [(1, i, 1, f"f{i}", f"/f{i}", f"/f{i}".encode(), "file", 1, None, 0, None, None, 0, None, None, None, None)
            for i in range(1, 1001)]

    def insert(conn: object) -> None:
        driver = conn.connection.driver_connection  # type: ignore[attr-defined]
        before = driver.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        try:
            sqlitedriver.executemany(conn, sqlitedriver.INSERT_NODES, rows)  # type: ignore[arg-type]
        finally:
            driver.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, before)

    ran = _traced(db, insert)
    assert len(ran) == 32  # 31 x 32 + 8
    assert db.read(lambda c: c.execute(text("SELECT count(*) FROM nodes WHERE ns_id = 1")).scalar()) == 1000
