"""PostgreSQL: a namespace transaction in two round trips (`cubby.metadata.pgscript` sends them).

A single-file commit used to make five: BEGIN (psycopg's, alone), the namespace lock, the
read of the nodes and chunks it needs, the write (`cubby.metadata.pgdriver.WRITE_ALL`), and
COMMIT. Now:

1. `lock_and_read`: ``BEGIN; SELECT ... FOR UPDATE; <the read>``. The read goes after the
   lock in the same message, so it takes its snapshot once the lock is held and sees every
   commit the lock waited for, as before (`cubby.metadata.pgscript` says why).
2. `write_and_commit`: ``EXECUTE cubby_write_all(...); COMMIT``. ``WRITE_ALL`` is prepared
   on the server once per connection, as psycopg prepared it before, so the server does not plan its nine sub-statements again.
   psycopg deallocates every prepared statement of its connection on a rollback (``DEALLOCATE
   ALL``), so the lock's message also asks whether ``cubby_write_all`` is still there
   (`IS_PREPARED`), and the write's message prepares it again first when it is not: no
   round trip is added for it. It is the transaction's last statement (`cubby.metadata.nstxn.write_namespace` ends its
   transaction there, and only when no outer `Database.write` joined it); if it fails the
   COMMIT is skipped and the transaction rolls back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from cubby.metadata import pgscript
from cubby.metadata.engine import Database
from cubby.metadata.pgdriver import (
    LIVE_NODES,
    LOCK_NAMESPACE,
    NODE_NAMES,
    NODES_AND_CHUNKS,
    UPDATE_NODES,
    WRITE_ALL,
    WRITE_ALL_TYPES,
    NodeRow,
    array_text,
    bytea_array,
    node_row,
)

MAX_READ = 500
"""At most this many keys and this many chunks are read with the lock (as `NamespaceTxn.prefetch` reads them)."""

_PREPARED = "cubby.write_all"
"""The connection's ``info`` key holding the driver connection when `lock_and_read` found
``cubby_write_all`` prepared on it (None when it did not)."""

_NAMES = tuple(WRITE_ALL_TYPES)
PREPARE_WRITE_ALL = (
    f"PREPARE cubby_write_all ({', '.join(WRITE_ALL_TYPES.values())}) AS "
    + WRITE_ALL % {name: f"${i}" for i, name in enumerate(_NAMES, 1)}
)


IS_PREPARED = "SELECT EXISTS (SELECT FROM pg_prepared_statements WHERE name = 'cubby_write_all')"


def _fill(sql: str, conn: Connection, params: Mapping[str, Any]) -> str:
    return sql % dict(zip(params, pgscript.literals(conn, list(params.values()))))


def lock_and_read(
    conn: Connection, ns_id: int, keys: Sequence[str], nss: Sequence[int], hashes: Sequence[str] | None
) -> tuple[tuple[Any, ...] | None, list[NodeRow], list[tuple[str, int, bool]]]:
    """Lock ``ns_id``'s row, then read its live nodes at ``keys`` and (unless ``hashes`` is
    None or empty) `cubby.metadata.pgdriver.HELD_CHUNKS` of ``hashes`` for ``nss``, in one
    round trip (the transaction's BEGIN with them when it has not started): the lock's row
    (head, next node, sealed; None if there is no such namespace), the nodes and the chunks.
    Callers keep ``keys`` and ``hashes`` to `MAX_READ` each."""
    statements = [LOCK_NAMESPACE % {"ns": ns_id}, IS_PREPARED]
    params: dict[str, Any] = {"ns": ns_id, "ks": bytea_array(keys)}
    if hashes:
        params.update(nss=array_text(nss), hashes=array_text(hashes))
        statements.append(_fill(NODES_AND_CHUNKS, conn, params))
    elif keys:
        statements.append(_fill(LIVE_NODES, conn, params))
    locked, prepared, *rest = pgscript.run(conn, statements)
    fairy = conn.connection
    fairy.info[_PREPARED] = fairy.driver_connection if prepared[0][0] else None
    found = rest[0] if rest else []
    nodes: list[NodeRow] = []
    chunks: list[tuple[str, int, bool]] = []
    width = len(NODE_NAMES)
    for values in found:
        if values[0] is None:
            chunks.append((values[width], int(values[width + 1]), bool(values[width + 2])))
        else:
            nodes.append(node_row(values[:width]))
    return (locked[0] if locked else None), nodes, chunks


def write_and_commit(db: Database, conn: Connection, params: Mapping[str, Any], updated: str | None) -> None:
    """`WRITE_ALL` with ``params`` (`cubby.metadata.pgdriver.write_params`), after
    `UPDATE_NODES` of the JSON rows ``updated`` unless None, then COMMIT: one round trip,
    with the PREPARE of the statement first when the transaction's `lock_and_read` found it
    missing. ``db`` is the database whose outermost write transaction this ends."""
    fairy = conn.connection
    args = ", ".join(pgscript.literals(conn, [params[name] for name in _NAMES]))
    statements = [f"EXECUTE cubby_write_all({args})"]
    if updated is not None:
        statements.insert(0, _fill(UPDATE_NODES, conn, {"u": updated}))
    if fairy.info.get(_PREPARED) is not fairy.driver_connection:
        statements.insert(0, PREPARE_WRITE_ALL)
        fairy.info[_PREPARED] = None  # known again at the next `lock_and_read`
    pgscript.run_and_commit(db, conn, statements)


__all__ = ["MAX_READ", "PREPARE_WRITE_ALL", "lock_and_read", "write_and_commit"]
