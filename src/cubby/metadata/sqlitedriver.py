"""SQLite: the statements of a namespace transaction, sent to the driver (`sqlite3`) directly.

Why. On the embedded default a single-file commit runs nine statements (BEGIN IMMEDIATE, the
namespace lock, the nodes at the path and its ancestors, the chunk check, the node, file
revision and journal inserts, the reference-count upsert, the new head) and COMMIT. Through
SQLAlchemy each cost ~50-60 us of CPU (execution context, compiled-cache lookup, expanding
IN parameters, type processing, result setup) while SQLite itself runs one in a few: in
process, `store.commit` was ~1.0 ms of CPU, more than half of it SQLAlchemy's execution.
Here the same statements, as fixed text, go to the driver on the transaction's own
connection (``sqlite3`` keeps its own prepared-statement cache keyed by the text).

What it keeps. The statements run inside the same transaction (`Database.write`'s, opened
with ``BEGIN IMMEDIATE``), in the same order, with the same values: path keys as UTF-8 bytes
(`cubby.metadata.schema.PathKey`), rows missing a column written as NULL (as
`cubby.metadata.pgdriver.rows_json` does on PostgreSQL). Errors are raised as SQLAlchemy's
(`DBAPIError`), as `Connection.execute` would, so a "database is locked" is retried by
`Database.write` and a constraint violation is the same `IntegrityError`. PostgreSQL has its
own (`cubby.metadata.pgdriver`); MariaDB keeps the SQLAlchemy statements.

Few steps, not a step per row. ``sqlite3`` lets go of the GIL around each step of a statement
(each row it inserts with ``executemany``, each row it reads) and must win it back after;
while another thread runs Python, that takes up to the interpreter's switch interval (5 ms),
and the writer waits so with the database's write lock held. Measured: 10,000 rows inserted
by ``executemany`` took 57 ms alone and 26-42 s beside one thread running Python; as
statements of 500 rows, 0.25 s. So an INSERT goes as a few statements of many rows
(`executemany`), and the hot reads of names and numbers come back as one row
(`packed_rows`).
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Float, Table
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from cubby.metadata.pgdriver import (
    JOURNAL_COLUMNS,
    NODE_COLUMNS,
    NODE_NAMES,
    REV_COLUMNS,
    NodeRow,
    as_sqlalchemy_error,
)

_BYTES = frozenset({"path_key", "deleted_key"})
"""Path-key columns: stored as UTF-8 bytes (`cubby.metadata.schema.PathKey`)."""


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _insert(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({_marks(len(columns))})"


LOCK_NAMESPACE = "SELECT head, next_node, sealed FROM namespaces WHERE ns_id = ?"
"""`cubby.metadata.nstxn.lock_namespace` on SQLite (``BEGIN IMMEDIATE`` already holds the lock)."""
NODE_KEYS = ("ns_id", "node_id", *NODE_COLUMNS)
INSERT_NODES = _insert("nodes", NODE_KEYS)
UPDATE_NODES = f"UPDATE nodes SET {', '.join(c + ' = ?' for c in NODE_COLUMNS)} WHERE ns_id = ? AND node_id = ?"
INSERT_REVS = _insert("file_revs", REV_COLUMNS)
INSERT_JOURNAL = _insert("journal", JOURNAL_COLUMNS)
UPSERT_REFS = (
    "INSERT INTO ns_chunks (ns_id, hash, refs, touched_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (ns_id, hash) DO UPDATE SET refs = ns_chunks.refs + excluded.refs, touched_at = excluded.touched_at"
)
"""`Database.insert_or_add` of ``ns_chunks`` (add ``refs``, set ``touched_at``) as SQLite spells it."""
SET_HEAD = "UPDATE namespaces SET head = ?, next_node = ? WHERE ns_id = ?"


def live_nodes_sql(n: int) -> str:
    """The live ``nodes`` rows of a namespace at ``n`` path keys (deleted ones have no key)."""
    return f"SELECT {', '.join(NODE_NAMES)} FROM nodes WHERE ns_id = ? AND path_key IN ({_marks(n)})"


@functools.cache
def held_columns(nss: int) -> tuple[str, ...]:
    """`cubby.metadata.writes`'s chunk check (`held_chunks`): a stored chunk's name and size,
    and whether one of ``nss`` namespaces holds it. No share lock: on SQLite the transaction
    holds the database's write lock, which the collector needs too."""
    return ("b.hash", "b.size", f"EXISTS (SELECT 1 FROM ns_chunks c WHERE c.hash = b.hash AND c.ns_id IN ({_marks(nss)}))")


def insert_sql(
    table: Table, columns: Sequence[str], *, ignore: bool = False, add: str | None = None, also: Sequence[str] = ()
) -> str | None:
    """The text of `cubby.metadata.engine.Database.insert_ignore` (``ignore``) or of its
    ``insert_or_add`` (``add``, ``also``) of rows holding ``columns`` of ``table``, for the
    driver; None when SQLAlchemy must build the statement: a column whose type converts values
    on their way in (path keys to bytes, booleans to integers; a float column's conversion is
    SQLite's own REAL affinity, so it needs none), or a column left out that has a default
    SQLAlchemy would fill in. Those chunk and pack tables that a batch of uploads writes a row
    per chunk of qualify: through SQLAlchemy, binding 1,000 rows cost more than SQLite's work."""
    dialect = sqlite.dialect()
    for c in table.c:
        if c.name in columns:
            if c.type.bind_processor(dialect) is not None and not isinstance(c.type, Float):
                return None
        elif c.default is not None:
            return None
    head = (
        f"INSERT {'OR IGNORE ' if ignore else ''}INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({_marks(len(columns))})"
    )
    if add is None:
        return head
    keys = ", ".join(c.name for c in table.primary_key.columns)
    sets = ", ".join([f"{add} = {table.name}.{add} + excluded.{add}", *(f"{c} = excluded.{c}" for c in also)])
    return f"{head} ON CONFLICT ({keys}) DO UPDATE SET {sets}"


def rows_of(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """Parameters for `insert_sql`'s text: each row's values in ``columns``' order (by one
    `operator.itemgetter`, in C: a generator per row was most of an upload's row building)."""
    if len(columns) == 1:
        return [(r[columns[0]],) for r in rows]
    return list(map(operator.itemgetter(*columns), rows))


def in_sql(select: str, column: str, n: int) -> str:
    """``select`` (a statement up to its WHERE) restricted to ``column IN`` ``n`` values."""
    return f"{select} WHERE {column} IN ({_marks(n)})"


LOCATION_COLUMNS = ("hash", "pack", "pos", "stored_len", "plain_len")
"""`cubby.metadata.chunk_index.SqlChunkIndex.lookup`'s columns of ``chunk_index`` (`chunk_rows`)."""
FORGET_TOMBSTONES = "DELETE FROM chunk_tombstones"
"""An upload bringing chunks back (`cubby.metadata.chunks`), with `in_sql` on ``hash``."""
TOUCH_CHUNKS = "UPDATE blocks SET touched_at = ?"
"""An upload finding chunks stored (`cubby.metadata.chunks`): one time for all, with `in_sql` on ``hash``."""


def chunk_rows(conn: Connection, table: str, columns: Sequence[str], hashes: Sequence[str]) -> list[list[str]]:
    """``columns`` of the rows of ``table`` (one keyed by chunk name) at ``hashes``, as
    `packed_rows` reads them: names and numbers only."""
    return packed_rows(conn, columns, f"FROM {table} WHERE hash IN ({_marks(len(hashes))})", hashes)


def _key(value: Any) -> Any:
    return None if value is None else str(value).encode("utf-8")


@functools.cache
def _bytes_at(columns: tuple[str, ...]) -> tuple[int, ...]:
    """Where the path-key columns are in ``columns`` (a few fixed tuples: remembered)."""
    return tuple(i for i, c in enumerate(columns) if c in _BYTES)


def values(row: Mapping[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
    """``row``'s values in ``columns``' order (missing ones NULL; path keys as bytes). Called
    for every row a batch of commits writes: a lookup per column, then only the path keys
    converted (a test of every column against them cost as much again)."""
    out = list(map(row.get, columns))
    for i in _bytes_at(tuple(columns)):
        out[i] = _key(out[i])
    return tuple(out)


@functools.cache
def _taker(columns: tuple[str, ...]) -> Any:
    """One `operator.itemgetter` of ``columns`` (a few fixed tuples: remembered)."""
    return operator.itemgetter(*columns)


def values_of(rows: Iterable[Mapping[str, Any]], columns: tuple[str, ...]) -> list[list[Any]]:
    """`values` of each of ``rows`` (as lists, which the driver takes as well): a batch of
    1,000 commits writes 3,000 rows, and one call for all of them spares a call, a tuple and
    a lookup of the path-key columns per row. A row holding every column is read by one
    `operator.itemgetter` (in C; a ``get`` per column was a third of a commit batch's Python
    in its transaction); one that lacks some (left NULL) by a ``get`` per column."""
    at = _bytes_at(columns)
    take = _taker(columns)
    out = []
    for row in rows:
        try:
            v = list(take(row))
        except KeyError:
            v = list(map(row.get, columns))
        for i in at:
            if (k := v[i]) is not None:
                v[i] = str(k).encode("utf-8")
        out.append(v)
    return out


def node_row(found: Sequence[Any]) -> NodeRow:
    """A ``nodes`` row of `live_nodes_sql` as `NodeRow` (what PostgreSQL's driver path answers)."""
    row = dict(zip(NODE_NAMES, found))
    for c in _BYTES:
        if row[c] is not None:
            row[c] = bytes(row[c]).decode("utf-8")
    row["deleted"] = bool(row["deleted"])
    return NodeRow(**row)


def live_nodes(conn: Connection, ns_id: int, keys: Sequence[str]) -> list[NodeRow]:
    """The live ``nodes`` rows of ``ns_id`` at ``keys`` (at most SQLite's parameter limit)."""
    found = execute(conn, live_nodes_sql(len(keys)), (ns_id, *(k.encode("utf-8") for k in keys))).fetchall()
    return [node_row(r) for r in found]


def held_chunks(conn: Connection, nss: Sequence[int], hashes: Sequence[str]) -> list[tuple[str, int, bool]]:
    """(hash, size, held by one of ``nss``) of the stored chunks among ``hashes``: one row
    (`packed_rows`; a commit batch's check finds a row per chunk it uploaded)."""
    found = packed_rows(conn, held_columns(len(nss)), f"FROM blocks b WHERE b.hash IN ({_marks(len(hashes))})", (*nss, *hashes))
    return [(h, int(size), held == "1") for h, size, held in found]


def packed_rows(conn: Connection, columns: Sequence[str], source: str, params: Sequence[Any]) -> list[list[str]]:
    """The rows of ``SELECT columns source``, each as the text of its values, read as one row:
    SQLite joins them (``group_concat``, values and rows parted by spaces) and they are split
    here, one step where the rows were a step each (see the module docstring). Only for
    ``columns`` that are never NULL (a NULL would drop its row) and never hold a space: chunk
    and pack names, numbers."""
    joined = " || ' ' || ".join(columns)
    text = execute(conn, f"SELECT group_concat({joined}, ' ') {source}", params).fetchone()[0]
    if not text:
        return []
    values = text.split(" ")
    width = len(columns)
    return [values[i : i + width] for i in range(0, len(values), width)]


def execute(conn: Connection, sql: str, params: Sequence[Any]) -> Any:
    """Run ``sql`` on ``conn``'s ``sqlite3`` connection, in its transaction; the cursor."""
    return _call(conn, sql, params, many=False)


def executemany(conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """``sql`` for each row of ``rows``. An ``INSERT ... VALUES (?, ...)`` (with or without
    an ON CONFLICT clause, which SQLite applies row by row as before) goes as a few
    statements of many rows each, not a step per row (see the module docstring); any other
    statement, once per row. An error rolls back the whole transaction, as before
    (`Database.write`), whichever row it was on."""
    if len(rows) == 1:
        _call(conn, sql, rows[0], many=False)
        return
    parts = _insert_parts(sql)
    if parts is None:
        _call(conn, sql, rows, many=True)
        return
    width = parts[1].count("?")
    driver: Any = conn.connection.driver_connection
    limit = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    at = 0
    for n in statement_sizes(len(rows), max(1, min(ROWS_PER_STATEMENT, limit // width))):
        _call(conn, _rows_sql(sql, n), list(itertools.chain.from_iterable(rows[at : at + n])), many=False)
        at += n


ROWS_PER_STATEMENT = 1024
"""The most rows one INSERT statement of `executemany` carries."""


def statement_sizes(count: int, most: int) -> Iterator[int]:
    """Rows per statement for ``count`` rows, at most ``most`` each: powers of two only, so
    that a table's inserts are a few texts (eleven at most), each prepared once and kept in
    the connection's statement cache (`cubby.metadata.engine`'s ``cached_statements``),
    however many rows a batch has; 1,000 rows are six statements (512, 256, 128, 64, 32, 8).
    Each statement is one step, one hand-off of the GIL: in a 10,000-file put, sizes of
    powers of eight (thirteen statements for 1,000 rows) kept the writer in its lock
    1.33-1.55 s, these 1.16-1.28 s."""
    size = 1
    while size * 2 <= most:
        size *= 2
    while count:
        while size > count:
            size //= 2
        yield size
        count -= size


_INSERT = re.compile(r"(INSERT .*? VALUES )(\(\?(?:, \?)*\))(.*)", re.S)


@functools.cache
def _insert_parts(sql: str) -> tuple[str, str, str] | None:
    """An INSERT's text before its one row of marks, that row, and what follows it (None: not
    such a statement)."""
    m = _INSERT.fullmatch(sql)
    return None if m is None else (m.group(1), m.group(2), m.group(3))


@functools.cache
def _rows_sql(sql: str, n: int) -> str:
    """``sql``, an INSERT of one row of marks, as an INSERT of ``n`` rows."""
    parts = _insert_parts(sql)
    assert parts is not None
    head, row, tail = parts
    return head + ", ".join([row] * n) + tail


def _call(conn: Connection, sql: str, params: Any, *, many: bool) -> Any:
    """Errors are SQLAlchemy's, as from `Connection.execute` (see the module docstring)."""
    fairy = conn.connection
    driver: Any = fairy.driver_connection
    dbapi = conn.dialect.loaded_dbapi
    try:
        return driver.executemany(sql, params) if many else driver.execute(sql, params)
    except dbapi.Error as exc:
        raise as_sqlalchemy_error(conn, sql, params, exc) from exc


__all__ = [
    "FORGET_TOMBSTONES", "INSERT_JOURNAL", "INSERT_NODES", "INSERT_REVS", "LOCATION_COLUMNS", "LOCK_NAMESPACE",
    "NODE_KEYS", "SET_HEAD", "TOUCH_CHUNKS", "UPDATE_NODES", "UPSERT_REFS", "chunk_rows", "execute",
    "executemany", "held_chunks", "held_columns", "in_sql", "insert_sql", "live_nodes", "live_nodes_sql",
    "node_row", "packed_rows", "rows_of", "statement_sizes", "values", "values_of",
]
