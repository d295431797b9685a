"""PostgreSQL: the statements of a namespace transaction, sent to the driver; its buffered rows in one.

Why. A single-file commit used to write its rows with five statements (insert the node, the
file revision and the journal entry, upsert the chunk references, write the head), each a
round trip and, above all, each ~60 us of SQLAlchemy CPU (execution context, parameter
processing, result setup: a raw psycopg round trip costs ~15 us). Here they are one fixed
statement of data-modifying CTEs whose rows arrive as one JSON array per table
(``json_populate_recordset``, typed by the table itself), so the same text serves one row or
a thousand, psycopg converts and prepares it once per connection, its few parameters cost
little to send (one array parameter per column cost more than the statements it replaced),
and the number of round trips per transaction no longer grows with the tables it touches.

What it keeps. The statement runs inside the namespace transaction like the ones it
replaces: every row commits or none does, with the same values, and a unique or NOT NULL
violation raises the same `IntegrityError`. The sub-statements of one statement run in no
fixed order and see one snapshot, so updated and new ``nodes`` rows go in one statement only
when there are not both (an update that frees a path key must land before an insert that
takes it): then the updates run first, on their own. No two sub-statements touch one table
otherwise. MariaDB and SQLite keep the SQLAlchemy statements of `NamespaceTxn.flush`.

`driver_execute` is how a hot statement skips SQLAlchemy's execution: on the same connection
and transaction, with the driver's errors raised as SQLAlchemy's (`DBAPIError`: a deadlock is
retried by `Database.write`, a dropped connection invalidated and the transaction run again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import orjson
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, StatementError

NODE_COLUMNS = (
    "parent_id", "name", "path", "path_key", "kind", "rev", "content_rev", "size", "content_hash", "mtime",
    "deleted", "deleted_key", "target_ns", "pending", "mode",
)
"""The ``nodes`` columns a `NamespaceTxn` writes (the same as `cubby.metadata.nstxn.NODE_COLUMNS`)."""
REV_COLUMNS = (
    "ns_id", "node_id", "rev", "path", "size", "content_hash", "blocklist", "mtime", "mode", "user_id", "created_at",
)
JOURNAL_COLUMNS = (
    "ns_id", "jid", "op", "node_id", "parent_id", "kind", "name", "path", "path_key", "rev", "size", "content_hash",
    "mtime", "old_path", "old_parent_id", "user_id", "created_at", "mode",
)
_BYTES = {"path_key", "deleted_key"}
"""Path keys are stored as UTF-8 bytes (`cubby.metadata.schema.PathKey`): sent as bytea's hex text."""


def _rows(table: str, param: str) -> str:
    """The rows of JSON array ``param`` as records of ``table`` (typed by the table itself)."""
    return f"json_populate_recordset(NULL::{table}, %({param})s::json)"


def _insert(table: str, columns: Sequence[str], param: str) -> str:
    cols = ", ".join(columns)
    return f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {_rows(table, param)}"


_NODE_COLS = ", ".join(NODE_COLUMNS)
UPDATE_NODES = (
    f"UPDATE nodes AS n SET ({_NODE_COLS}) = ({', '.join('u.' + c for c in NODE_COLUMNS)}) "
    f"FROM {_rows('nodes', 'u')} AS u WHERE n.ns_id = u.ns_id AND n.node_id = u.node_id"
)
"""The updated ``nodes`` rows of JSON array ``u``."""
WRITE_ALL = (
    f"WITH upd AS ({UPDATE_NODES}), "
    f"ins AS ({_insert('nodes', ('ns_id', 'node_id', *NODE_COLUMNS), 'i')}), "
    f"revs AS ({_insert('file_revs', REV_COLUMNS, 'r')}), "
    f"jrn AS ({_insert('journal', JOURNAL_COLUMNS, 'j')}), "
    f"refs AS ({_insert('ns_chunks', ('ns_id', 'hash', 'refs', 'touched_at'), 'c')} "
    "ON CONFLICT (ns_id, hash) DO UPDATE SET refs = ns_chunks.refs + excluded.refs, touched_at = excluded.touched_at) "
    "UPDATE namespaces SET head = %(head)s, next_node = %(next_node)s WHERE ns_id = %(ns)s AND %(set_head)s"
)
"""Every buffered row of a `NamespaceTxn`, and (when ``set_head``) its head, in one statement.
Its text is under psycopg's 4,096 characters and 50 parameters, so psycopg converts it once."""
WRITE_ALL_TYPES = {
    "u": "text", "i": "text", "r": "text", "j": "text", "c": "text",
    "head": "bigint", "next_node": "bigint", "ns": "bigint", "set_head": "boolean",
}
"""The parameters of `WRITE_ALL` and their types, for a server-side ``PREPARE`` of it
(`cubby.metadata.nstxn` sends it with its COMMIT as ``EXECUTE``: `cubby.metadata.pgscript`)."""


def rows_json(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` (only ``columns``, missing ones null) as the JSON array `_rows` reads."""
    if not rows:  # most tables of a small commit get no row
        return "[]"
    keys = _BYTES.intersection(columns)
    out = []
    for r in rows:
        d = {c: r.get(c) for c in columns}
        for c in keys:
            key = d[c]
            if key is not None:
                d[c] = "\\x" + str(key).encode("utf-8").hex()
        out.append(d)
    return orjson.dumps(out).decode("utf-8")


def write_params(
    *, ns_id: int, now: float, head: int | None, next_node: int, updated: Sequence[Mapping[str, Any]],
    inserted: Sequence[Mapping[str, Any]], revs: Sequence[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]],
    refs: Mapping[str, int],
) -> dict[str, Any]:
    """The parameters of `WRITE_ALL`; ``head`` None leaves the namespace row alone."""
    node_cols = ("ns_id", "node_id", *NODE_COLUMNS)
    chunk_rows = [{"ns_id": ns_id, "hash": h, "refs": refs[h], "touched_at": now} for h in sorted(refs)]
    return {
        "ns": ns_id, "head": head or 0, "next_node": next_node, "set_head": head is not None,
        "u": rows_json(updated, node_cols), "i": rows_json(inserted, node_cols), "r": rows_json(revs, REV_COLUMNS),
        "j": rows_json(entries, JOURNAL_COLUMNS), "c": rows_json(chunk_rows, ("ns_id", "hash", "refs", "touched_at")),
    }


def array_text(values: Iterable[object]) -> str:
    """``values`` as a PostgreSQL array literal (``{"a","b"}``), sent as one text parameter and
    cast by the statement (``%(x)s::bigint[]``, ``::text[]``, ``::bytea[]``).

    Why. psycopg's list dumper (its type inference for the elements, a dumper per list, the
    array's binary form) cost ~35 us of CPU per statement with three list parameters, more
    than the rest of the statement's client side; one string is dumped as it is (ad hoc loop:
    80 -> 44 us for a statement with three small arrays). Every element is quoted, with
    ``\\`` and ``"`` escaped, so any text is safe."""
    return "{" + ",".join('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def bytea_array(keys: Iterable[str]) -> str:
    """Path keys (UTF-8 text, stored as bytes) as a ``bytea[]`` literal of hex values."""
    return "{" + ",".join('"\\\\x' + k.encode("utf-8").hex() + '"' for k in keys) + "}"


class NodeRow(SimpleNamespace):
    """A ``nodes`` row read through the driver: its columns as attributes, as SQLAlchemy's
    ``Row`` has them, and ``_mapping`` (`cubby.metadata.nstxn.entry_of` reads it)."""

    @property
    def _mapping(self) -> dict[str, Any]:
        return self.__dict__


NODE_NAMES = ("ns_id", "node_id", *NODE_COLUMNS)
LIVE_NODES = f"SELECT {', '.join(NODE_NAMES)} FROM nodes WHERE ns_id = %(ns)s AND path_key = ANY(%(ks)s::bytea[])"
"""The live nodes at some path keys of a namespace (deleted ones have no key)."""
LOCK_NAMESPACE = "SELECT head, next_node, sealed FROM namespaces WHERE ns_id = %(ns)s FOR UPDATE"
"""`cubby.metadata.nstxn.lock_namespace` as the driver runs it (``sealed``: a copy being moved away)."""
HELD_CHUNKS = (
    "SELECT b.hash, b.size, EXISTS (SELECT 1 FROM ns_chunks c WHERE c.hash = b.hash AND c.ns_id = ANY(%(nss)s::bigint[])) "
    "FROM blocks b WHERE b.hash = ANY(%(hashes)s::text[]) FOR SHARE OF b"
)
"""`cubby.metadata.writes`'s chunk check as the driver runs it: stored chunks among ``hashes``
with whether one of ``nss`` holds each, their ``blocks`` rows locked in share mode."""


NODES_AND_CHUNKS = (
    f"WITH held AS ({HELD_CHUNKS}) "
    f"SELECT {', '.join(NODE_NAMES)}, NULL::text, NULL::bigint, NULL::boolean FROM nodes "
    "WHERE ns_id = %(ns)s AND path_key = ANY(%(ks)s::bytea[]) "
    f"UNION ALL SELECT {', '.join(['NULL'] * len(NODE_NAMES))}, * FROM held"
)
"""`LIVE_NODES` and `HELD_CHUNKS` in one round trip (a commit needs both, after its lock):
node rows first, then one row per stored chunk, its node columns null."""


def node_row(values: Sequence[Any]) -> NodeRow:
    """A `NodeRow` of the values of one row of `LIVE_NODES` (in `NODE_NAMES` order)."""
    row = dict(zip(NODE_NAMES, values))
    for c in _BYTES:
        if row[c] is not None:
            row[c] = bytes(row[c]).decode("utf-8")
    return NodeRow(**row)


def live_nodes(conn: Connection, ns_id: int, keys: Sequence[str]) -> list[NodeRow]:
    """The live ``nodes`` rows of ``ns_id`` at ``keys``, in one statement."""
    cur = driver_execute(conn, LIVE_NODES, {"ns": ns_id, "ks": bytea_array(keys)})
    return [node_row(values) for values in cur.fetchall()]


def nodes_and_chunks(
    conn: Connection, ns_id: int, keys: Sequence[str], nss: Sequence[int], hashes: Sequence[str]
) -> tuple[list[NodeRow], list[tuple[str, int, bool]]]:
    """`live_nodes` at ``keys``, and `HELD_CHUNKS` of ``hashes`` for ``nss``, in one statement."""
    params = {"ns": ns_id, "ks": bytea_array(keys), "nss": array_text(nss), "hashes": array_text(hashes)}
    nodes: list[NodeRow] = []
    chunks: list[tuple[str, int, bool]] = []
    width = len(NODE_NAMES)
    for values in driver_execute(conn, NODES_AND_CHUNKS, params).fetchall():
        if values[0] is None:
            chunks.append((values[width], int(values[width + 1]), bool(values[width + 2])))
        else:
            nodes.append(node_row(values[:width]))
    return nodes, chunks


def driver_execute(conn: Connection, sql: str, params: Mapping[str, Any]) -> Any:
    """Run ``sql`` on ``conn``'s driver connection, in its transaction; the driver's cursor
    (the connection's one, reused: read its rows before the next statement).

    Errors are SQLAlchemy's, as from `Connection.execute`: a disconnect invalidates the
    connection and says so (``connection_invalidated``), so that `Database` runs the
    transaction again on a new one."""
    fairy = conn.connection
    dbapi = conn.dialect.loaded_dbapi
    driver: Any = fairy.driver_connection
    cur = fairy.info.get("cubby.cursor")  # one per connection: making a cursor cost ~15 us
    if cur is None or cur.closed or cur.connection is not driver:
        cur = fairy.info["cubby.cursor"] = driver.cursor()
    try:
        cur.execute(sql, params)
    except dbapi.Error as exc:
        raise as_sqlalchemy_error(conn, sql, params, exc, cur) from exc
    return cur


_SESSION_ENDED = ("57P01", "57P02", "57P03")
"""PostgreSQL's admin_shutdown, crash_shutdown, cannot_connect_now: the server ends the session."""


def _ends_session(exc: Any) -> bool:
    """Whether PostgreSQL said it is ending this session (or the error is of class 08, a
    connection exception). The driver sees the connection closed only once it has read the
    end of the stream, which may come a moment after the error (behind a proxy, for one):
    this error alone says the connection is gone."""
    state = getattr(exc, "sqlstate", None) or ""
    return state in _SESSION_ENDED or state.startswith("08")


def as_sqlalchemy_error(conn: Connection, sql: str, params: Any, exc: Any, cursor: Any = None) -> StatementError:
    """The driver's ``exc`` as `Connection.execute` would have raised it (so deadlock retries,
    "database is locked" retries and constraint errors work as on SQLAlchemy's path), with the
    connection invalidated first when the error says it is gone. Shared by the modules that
    send statements to the driver directly (this one and `cubby.metadata.sqlitedriver`).

    As on SQLAlchemy's path, a dead connection condemns the pool's other connections too (a
    restart or a failover ended them all): the pool is replaced (``dispose(close=False)``;
    connections in use finish their work and are dropped when given back), so the
    transaction that `Database` runs again gets a new connection, not the next dead one."""
    fairy = conn.connection
    gone = conn.dialect.is_disconnect(exc, fairy.dbapi_connection, cursor) or _ends_session(exc)
    if gone:
        conn.invalidate(exc)
        conn.engine.dispose(close=False)
    return DBAPIError.instance(
        sql, params, exc, conn.dialect.loaded_dbapi.Error, connection_invalidated=gone, dialect=conn.dialect
    )


__all__ = [
    "HELD_CHUNKS",
    "LIVE_NODES",
    "LOCK_NAMESPACE",
    "NODES_AND_CHUNKS",
    "NODE_COLUMNS",
    "NODE_NAMES",
    "UPDATE_NODES",
    "WRITE_ALL",
    "WRITE_ALL_TYPES",
    "NodeRow",
    "array_text",
    "as_sqlalchemy_error",
    "bytea_array",
    "driver_execute",
    "live_nodes",
    "node_row",
    "nodes_and_chunks",
    "rows_json",
    "write_params",
]
