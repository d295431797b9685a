"""PostgreSQL: several statements in one round trip, with the transaction's BEGIN folded in.

Why. psycopg opens a transaction by sending ``BEGIN`` alone, one round trip, before the first
statement; a single-file commit then paid five round trips (BEGIN, the namespace lock, the
prefetch read, the write, COMMIT), each a wake-up of this thread and of the database's, and
psycopg's Python around it: together 20-25% of a commit's server CPU. Here the statements
that do not depend on each other's results go in one simple-query message: ``BEGIN`` when
the transaction has not started yet, the lock, and the read that only makes sense under it.

What it keeps.
- Order and snapshots: the server runs the statements of one message one after the other,
  and at READ COMMITTED each takes its own snapshot when it starts, so a read placed after
  the lock sees every commit that the lock waited for, exactly as when it was sent alone.
- Atomicity: the message runs inside the transaction SQLAlchemy opened. ``BEGIN`` is added
  only when psycopg would have sent one itself (the connection is idle and not in
  autocommit), with psycopg's own isolation level; afterwards the connection is in a
  transaction, so psycopg sends no second BEGIN, and the COMMIT or ROLLBACK that ends the
  transaction is psycopg's as before. A statement that fails stops the message there (the
  server skips the rest of it) and leaves the transaction aborted, which the caller's
  rollback ends: nothing of it commits.
- Errors: raised as SQLAlchemy's (`cubby.metadata.pgdriver.as_sqlalchemy_error`), so a
  deadlock is retried and a dropped connection is replaced and the transaction run again.
- Values: bound on the client, each quoted by libpq (``PQescapeLiteral``) or written as an
  integer; rows are decoded by psycopg's own loaders (text format).

`script_and_commit` also ends the transaction in the same message (the write and its
COMMIT); it tells the `Database` first (`Database.commit_sent`), so that a connection lost
while that message was under way is never taken for one that died before its COMMIT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import errors, generators, pq
from psycopg.adapt import Transformer
from sqlalchemy.engine import Connection

from cubby.metadata.engine import Database
from cubby.metadata.pgdriver import as_sqlalchemy_error

Rows = list[tuple[Any, ...]]

_FATAL_ERROR, _TUPLES_OK, _IDLE = pq.ExecStatus.FATAL_ERROR, pq.ExecStatus.TUPLES_OK, pq.TransactionStatus.IDLE


Value = str | int | bool | None


def literals(conn: Connection, values: Sequence[Value]) -> list[str]:
    """``values`` as SQL text for a statement of `run`: integers and booleans as written,
    text quoted by libpq for this connection (its encoding and ``standard_conforming_strings``)."""
    escape = _kit(conn)[2].escape_literal
    out = []
    for value in values:
        if value is None:
            out.append("NULL")
        elif value is True or value is False:
            out.append("true" if value else "false")
        elif isinstance(value, int):
            out.append(str(value))
        else:
            out.append(bytes(escape(value.encode("utf-8"))).decode("utf-8"))
    return out


def _kit(conn: Connection) -> tuple[Any, Any, Any]:
    """``conn``'s driver connection, and a row decoder and a quoter for it, made once per
    connection (their set-up, such as the decoder's loaders, is not repeated per statement)."""
    fairy = conn.connection
    driver: Any = fairy.driver_connection
    kit = fairy.info.get("cubby.pgscript")
    if kit is None or kit[0] is not driver:
        kit = fairy.info["cubby.pgscript"] = (driver, Transformer(driver), pq.Escaping(driver.pgconn))
    return kit  # type: ignore[no-any-return]  # (driver, Transformer, pq.Escaping)


def begin_statement(driver: Any) -> str | None:
    """The BEGIN psycopg would send before the next statement on ``driver``, or None when
    it would send none (a transaction is open, or the connection is in autocommit)."""
    if driver.autocommit or driver.pgconn.transaction_status != _IDLE:
        return None
    level = driver.isolation_level
    return "BEGIN" if level is None else f"BEGIN ISOLATION LEVEL {level.name.replace('_', ' ')}"


def run(conn: Connection, statements: Sequence[str]) -> list[Rows]:
    """Run ``statements`` (SQL with their values in them: `literals`) in one round trip, in
    ``conn``'s transaction (its BEGIN sent with them if it has not started): the rows of each
    statement, in order (an empty list for one that returns none)."""
    return _send(conn, statements, commit=False)


def run_and_commit(db: Database, conn: Connection, statements: Sequence[str]) -> list[Rows]:
    """`run`, then COMMIT, in the same round trip: the last statements of the transaction.
    On an error nothing committed (the server skips the rest of the message after a failed
    statement, COMMIT included; a failed COMMIT rolls back), except when the connection was
    lost on the way: then the outcome is unknown, and ``db`` (whose write transaction this
    is, not one joined by an outer `Database.write`) does not run it again."""
    db.commit_sent()
    return _send(conn, statements, commit=True)


def _send(conn: Connection, statements: Sequence[str], *, commit: bool) -> list[Rows]:
    driver, tx, _ = _kit(conn)
    begin = begin_statement(driver)
    texts = [begin, *statements] if begin is not None else list(statements)
    if commit:
        texts.append("COMMIT")
    sql = "; ".join(texts)
    try:
        with driver.lock:
            driver.pgconn.send_query(sql.encode("utf-8"))
            results = driver.wait(generators.execute(driver.pgconn))
    except errors.Error as exc:
        raise as_sqlalchemy_error(conn, sql, (), exc) from exc
    for res in results:
        if res.status == _FATAL_ERROR:
            failed = errors.error_from_result(res)
            raise as_sqlalchemy_error(conn, sql, (), failed) from failed
    if begin is not None:
        results = results[1:]
    if commit:
        results = results[:-1]
    out: list[Rows] = []
    for res in results:
        if res.status != _TUPLES_OK:
            out.append([])
            continue
        tx.set_pgresult(res)
        out.append(tx.load_rows(0, res.ntuples, tuple))
    tx.set_pgresult(None)
    return out


__all__ = ["Rows", "Value", "begin_statement", "literals", "run", "run_and_commit"]
