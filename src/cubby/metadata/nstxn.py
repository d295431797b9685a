"""`NamespaceTxn`: one write transaction on one namespace, and how to open one.

How a mutation stays atomic and the journal gap-free: every write transaction first locks its
namespace's row (``SELECT ... FOR UPDATE``; on SQLite ``BEGIN IMMEDIATE`` already holds the
database's write lock), reads ``head``, hands out ``head + 1, head + 2, ...`` as journal ids and
writes the new head back before committing. Two transactions on one namespace therefore run one
after the other, and a transaction that fails rolls its journal ids back with everything else.

Every function here takes the `Database` it runs on, so that a shard router can hand each
namespace its own. A `NamespaceTxn` touches only rows keyed by its namespace (``nodes``,
``file_revs``, ``journal``, ``ns_chunks``, its ``namespaces`` row): nothing here crosses
namespaces. `lock_namespaces` is the one exception, kept for shares: it opens several on one
connection, which works only while those namespaces share a database (the sharded design
replaces each such call by single-namespace steps tied by an intent).

`cubby.metadata.pgtrips` (and with it psycopg) is imported where PostgreSQL is used, not here:
every start of a process on SQLite would load it for nothing (a tenth of a server's imports).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, TypeVar

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection, Row

from cubby.core import paths
from cubby.errors import NamespaceGone, NamespaceMoving
from cubby.metadata import sqlitedriver
from cubby.metadata.engine import Database
from cubby.metadata.pgdriver import (
    JOURNAL_COLUMNS,
    REV_COLUMNS,
    UPDATE_NODES,
    WRITE_ALL,
    driver_execute,
    live_nodes,
    rows_json,
    write_params,
)
from cubby.metadata.schema import file_revs, journal, namespaces, nodes, ns_chunks
from cubby.model import Entry

T = TypeVar("T")

ROOT_NODE = 0
"""The node id of a namespace's root folder, which has no row in ``nodes``."""

NODE_COLUMNS = (
    "parent_id", "name", "path", "path_key", "kind", "rev", "content_rev", "size", "content_hash", "mtime",
    "deleted", "deleted_key", "target_ns", "pending", "mode",
)


def key_range(prefix_key: str) -> tuple[str, str]:
    """Bounds (exclusive) of the keys strictly below folder ``prefix_key``: '/' + 1 is '0'."""
    base = "" if prefix_key == paths.ROOT else prefix_key
    return base + "/", base + "0"


def entry_of(row: Row[Any] | Any) -> Entry:
    """The `Entry` of a ``nodes`` row: one read (a ``Row``, a `NodeRow`) or one this
    transaction wrote (`NamespaceTxn.put_node`'s cached record, whose columns left unset, such
    as a folder's ``mode``, are NULL)."""
    m = row._mapping if hasattr(row, "_mapping") else vars(row)
    return Entry(
        ns_id=m["ns_id"],
        node_id=m["node_id"],
        parent_id=m["parent_id"],
        path=m["path"],
        name=m["name"],
        kind=m["kind"],
        rev=m["rev"],
        size=m["size"] or 0,
        content_hash=m["content_hash"],
        mtime=m["mtime"],
        deleted=bool(m["deleted"]),
        target_ns=m.get("target_ns"),
        mode=m.get("mode"),
    )


def root_entry(ns_id: int, head: int) -> Entry:
    """The root folder of a namespace (it has no row), at revision ``head``."""
    return Entry(ns_id=ns_id, node_id=ROOT_NODE, parent_id=None, path="/", name="", kind="folder", rev=head)


# The statements of every write transaction, built once: building a statement (and its cache
# key) on each call cost more CPU than running it. Parameters are bound by name.
_LIVE = select(nodes).where(nodes.c.ns_id == bindparam("ns"), nodes.c.path_key == bindparam("k"))
_LIVE_MANY = select(nodes).where(
    nodes.c.ns_id == bindparam("ns"), nodes.c.path_key.in_(bindparam("ks", expanding=True))
)
_LOCK_FOR_UPDATE = (  # MariaDB's; PostgreSQL and SQLite send theirs to the driver
    select(namespaces.c.head, namespaces.c.next_node, namespaces.c.sealed)
    .where(namespaces.c.ns_id == bindparam("ns"))
    .with_for_update()
)
_UPDATE_NODE = (
    update(nodes)
    .where(nodes.c.ns_id == bindparam("b_ns"), nodes.c.node_id == bindparam("b_node"))
    .values({c: bindparam(f"v_{c}") for c in NODE_COLUMNS})
)
_INSERT_NODES = insert(nodes)
_INSERT_REVS = insert(file_revs)
_INSERT_JOURNAL = insert(journal)
_SET_HEAD = (
    update(namespaces)
    .where(namespaces.c.ns_id == bindparam("b_ns"))
    .values(head=bindparam("v_head"), next_node=bindparam("v_next"))
)


def _one_or_many(rows: list[dict[str, Any]]) -> dict[str, Any] | list[dict[str, Any]]:
    """Parameters for one statement: a single row as a plain execute, since a list of one
    goes through SQLAlchemy's executemany path (several times the CPU of the statement)."""
    return rows[0] if len(rows) == 1 else rows


@dataclass
class NamespaceTxn:
    """One write transaction on one namespace, holding its lock (open it with `open_txn`).

    It hands out journal ids and node ids in order, and buffers the rows it writes (nodes,
    revisions, journal entries, chunk references) so that a batch of a thousand commits costs a
    handful of multi-row statements instead of thousands of single ones. Lookups through `live`
    see the buffered rows; `flush` must run before any statement that reads the tables directly.
    """

    db: Database
    conn: Connection
    ns_id: int
    head: int
    next_node: int
    user_id: int | None
    now: float = field(default_factory=time.time)
    cache: dict[str, Any] = field(default_factory=dict)
    new_nodes: dict[int, dict[str, Any]] = field(default_factory=dict)
    changed_nodes: dict[int, dict[str, Any]] = field(default_factory=dict)
    rev_rows: list[dict[str, Any]] = field(default_factory=list)
    journal_rows: list[dict[str, Any]] = field(default_factory=list)
    ref_counts: dict[str, int] = field(default_factory=dict)
    chunk_sizes: dict[str, int] | None = None
    usable: set[str] | None = None
    checked: set[str] = field(default_factory=set)
    readable: tuple[int, ...] = ()
    """Other namespaces the caller can read: their chunks need no proof of possession here."""
    share_origin: Any = None
    """(cut, owner's root namespace) of a shared namespace, once `same_as_before_share` read it."""

    def next_jid(self) -> int:
        self.head += 1
        return self.head

    def new_node_id(self) -> int:
        nid = self.next_node
        self.next_node += 1
        return nid

    # -- lookups that see this transaction's own writes ---------------------------------------
    def live(self, path_key: str) -> Any:
        if path_key not in self.cache and self.db.dialect != "mysql":  # the driver's statement
            self.prefetch([path_key])
        if path_key not in self.cache:
            self.cache[path_key] = self.conn.execute(_LIVE, {"ns": self.ns_id, "k": path_key}).first()
        return self.cache[path_key]

    def prefetch(self, keys: Iterable[str]) -> None:
        """Load the live nodes at many keys with a few IN queries (missing keys cache as None)."""
        todo = sorted({k for k in keys if k not in self.cache})
        for i in range(0, len(todo), 500):
            part = todo[i : i + 500]
            for k in part:
                self.cache[k] = None
            if self.db.dialect == "postgresql":
                for node in live_nodes(self.conn, self.ns_id, part):
                    self.cache[node.path_key] = node
                continue
            if self.db.is_sqlite:
                for node in sqlitedriver.live_nodes(self.conn, self.ns_id, part):
                    self.cache[node.path_key] = node
                continue
            for row in self.conn.execute(_LIVE_MANY, {"ns": self.ns_id, "ks": part}):
                self.cache[row.path_key] = row

    def forget(self) -> None:
        self.cache.clear()

    def note_chunks(self, found: Iterable[Any]) -> None:
        """Record rows of the chunk check (hash, size, held): stored chunks, and whether this
        namespace (or one the caller reads) holds each."""
        if self.usable is None or self.chunk_sizes is None:
            self.usable, self.chunk_sizes = set(), {}
        for h, size, held in found:
            self.chunk_sizes[h] = int(size)
            if held:
                self.usable.add(h)

    # -- buffered writes ------------------------------------------------------------------------
    def put_node(self, node_id: int, values: dict[str, Any], *, new: bool) -> None:
        full = {"ns_id": self.ns_id, "node_id": node_id, **values}
        if new or node_id in self.new_nodes:
            self.new_nodes[node_id] = full
        else:
            self.changed_nodes[node_id] = full
        if values.get("path_key") is not None:
            self.cache[values["path_key"]] = SimpleNamespace(**full)

    def add_refs(self, hashes: Iterable[str], count: int = 1) -> None:
        """Count ``count`` more references from this namespace to each of ``hashes`` (once each)."""
        for h in set(hashes):
            self.ref_counts[h] = self.ref_counts.get(h, 0) + count

    def journal(
        self,
        op: str,
        *,
        node_id: int,
        parent_id: int,
        kind: str,
        path: str,
        rev: int,
        size: int = 0,
        content_hash: str | None = None,
        mtime: float | None = None,
        old_path: str | None = None,
        old_parent_id: int | None = None,
        mode: int | None = None,
        name: str | None = None,
        path_key: str | None = None,
    ) -> None:
        """Buffer one journal entry; ``name`` and ``path_key`` are those of ``path`` (a
        commit has them already: each is computed once per file of a batch)."""
        self.journal_rows.append(
            {
                "ns_id": self.ns_id, "jid": rev, "op": op, "node_id": node_id, "parent_id": parent_id, "kind": kind,
                "name": paths.split(path)[1] if name is None else name, "path": path,
                "path_key": paths.key(path) if path_key is None else path_key, "rev": rev, "size": size,
                "content_hash": content_hash, "mtime": mtime, "old_path": old_path, "old_parent_id": old_parent_id,
                "user_id": self.user_id, "created_at": self.now, "mode": mode,
            }
        )

    def flush(self) -> None:
        """Write the buffered rows (see the class docstring)."""
        if self.db.dialect == "postgresql":
            self._write_all(head=None)
            return
        if self.db.is_sqlite:
            self._write_sqlite()
            return
        conn = self.conn
        if self.changed_nodes:
            conn.execute(
                _UPDATE_NODE,
                _one_or_many([
                    {"b_ns": v["ns_id"], "b_node": v["node_id"], **{f"v_{c}": v.get(c) for c in NODE_COLUMNS}}
                    for v in self.changed_nodes.values()
                ]),
            )
        if self.new_nodes:
            conn.execute(
                _INSERT_NODES,
                _one_or_many([{c: v.get(c) for c in ("ns_id", "node_id", *NODE_COLUMNS)} for v in self.new_nodes.values()]),
            )
        if self.rev_rows:
            conn.execute(_INSERT_REVS, _one_or_many(self.rev_rows))
        if self.journal_rows:
            conn.execute(_INSERT_JOURNAL, _one_or_many(self.journal_rows))
        if self.ref_counts:
            # One upsert (insert the count, or add it to the stored one), sorted so that
            # concurrent transactions take the rows' locks in one order.
            self.db.insert_or_add(
                conn, ns_chunks,
                [{"ns_id": self.ns_id, "hash": h, "refs": self.ref_counts[h], "touched_at": self.now}
                 for h in sorted(self.ref_counts)],
                add="refs", also=("touched_at",),
            )
        self.new_nodes.clear()
        self.changed_nodes.clear()
        self.rev_rows.clear()
        self.journal_rows.clear()
        self.ref_counts.clear()

    def _write_sqlite(self) -> None:
        """SQLite: the buffered rows, in `flush`'s order, through the driver (`cubby.metadata.sqlitedriver`)."""
        d, conn = sqlitedriver, self.conn
        if self.changed_nodes:
            d.executemany(conn, d.UPDATE_NODES, [
                (*d.values(v, NODE_COLUMNS), v["ns_id"], v["node_id"]) for v in self.changed_nodes.values()
            ])
        if self.new_nodes:
            d.executemany(conn, d.INSERT_NODES, d.values_of(self.new_nodes.values(), d.NODE_KEYS))
        if self.rev_rows:
            d.executemany(conn, d.INSERT_REVS, d.values_of(self.rev_rows, REV_COLUMNS))
        if self.journal_rows:
            d.executemany(conn, d.INSERT_JOURNAL, d.values_of(self.journal_rows, JOURNAL_COLUMNS))
        if self.ref_counts:  # sorted, as in `flush`
            d.executemany(conn, d.UPSERT_REFS, [
                (self.ns_id, h, self.ref_counts[h], self.now) for h in sorted(self.ref_counts)
            ])
        self.new_nodes.clear()
        self.changed_nodes.clear()
        self.rev_rows.clear()
        self.journal_rows.clear()
        self.ref_counts.clear()

    def _write_all(self, *, head: int | None, commit: bool = False) -> None:
        """PostgreSQL: the buffered rows, and ``head`` unless None, in one statement
        (`cubby.metadata.pgdriver`; updated nodes first on their own when there are new ones
        too); ``commit``: and the transaction's COMMIT, in the same round trip (`cubby.metadata.pgtrips`)."""
        updated, inserted = list(self.changed_nodes.values()), list(self.new_nodes.values())
        first: str | None = None
        if updated and inserted:
            first = rows_json(updated, ("ns_id", "node_id", *NODE_COLUMNS))
            if not commit:
                driver_execute(self.conn, UPDATE_NODES, {"u": first})
            updated = []
        params = write_params(
            ns_id=self.ns_id, now=self.now, head=head, next_node=self.next_node, updated=updated,
            inserted=inserted, revs=self.rev_rows, entries=self.journal_rows, refs=self.ref_counts,
        ) if updated or inserted or self.rev_rows or self.journal_rows or self.ref_counts or head is not None else None
        if commit:
            from cubby.metadata import pgtrips  # (PostgreSQL only: see the module docstring)

            assert params is not None  # a commit always writes the head
            pgtrips.write_and_commit(self.db, self.conn, params, first)
        elif params is not None:
            driver_execute(self.conn, WRITE_ALL, params)
        self.new_nodes.clear()
        self.changed_nodes.clear()
        self.rev_rows.clear()
        self.journal_rows.clear()
        self.ref_counts.clear()

    def finish(self, *, commit: bool = False) -> None:
        """Flush, and write the namespace's new head and node counter (before the commit).
        ``commit`` (PostgreSQL only, and only in a `Database.write` that no outer one joined):
        commit the transaction too, in the same round trip; nothing may run in it afterwards."""
        if self.db.dialect == "postgresql":
            self._write_all(head=self.head, commit=commit)
            return
        self.flush()
        if self.db.is_sqlite:
            sqlitedriver.execute(self.conn, sqlitedriver.SET_HEAD, (self.head, self.next_node, self.ns_id))
            return
        self.conn.execute(_SET_HEAD, {"b_ns": self.ns_id, "v_head": self.head, "v_next": self.next_node})


def lock_namespace(db: Database, conn: Connection, ns_id: int) -> tuple[int, int]:
    """Lock ``ns_id``'s row on ``conn`` (a write transaction of ``db``): (head, next node id).
    `NotFound` if the namespace does not exist; the retryable `NamespaceMoving` if this copy is
    sealed (it is being moved to another shard: `cubby.metadata.rebalance`; the seal is set
    under this same lock, so no write lands in the old copy after the last one was copied)."""
    if db.dialect == "postgresql":  # with the transaction's BEGIN, when it has not started
        from cubby.metadata import pgtrips

        row = pgtrips.lock_and_read(conn, ns_id, (), (), None)[0]
    elif db.is_sqlite:
        row = sqlitedriver.execute(conn, sqlitedriver.LOCK_NAMESPACE, (ns_id,)).fetchone()
    else:
        row = conn.execute(_LOCK_FOR_UPDATE, {"ns": ns_id}).first()
    return _checked(ns_id, row)


def _checked(ns_id: int, row: Any) -> tuple[int, int]:
    """(head, next node id) of the namespace row ``row`` that `lock_namespace` locked."""
    if row is None:
        raise NamespaceGone(f"namespace {ns_id} does not exist")
    if row[2]:
        raise NamespaceMoving(f"namespace {ns_id} is moving to another shard; retry in a moment", ns_id=ns_id)
    return int(row[0]), int(row[1])


def open_txn(
    db: Database, conn: Connection, ns_id: int, user_id: int | None, *, readable: Iterable[int] = (),
    now: float | None = None, keys: Iterable[str] = (), hashes: Iterable[str] | None = None,
) -> NamespaceTxn:
    """Lock ``ns_id`` on ``conn`` and open a `NamespaceTxn` on it; the caller calls `finish`.

    ``keys`` and ``hashes``: what the transaction will read first, under the lock (the live
    nodes at those path keys, and the chunk check of those chunks, which locks their
    ``blocks`` rows in share mode: `cubby.metadata.writes`); None for ``hashes`` when the chunk
    check is not this database's. On PostgreSQL they are read in the lock's round trip
    (`cubby.metadata.pgtrips.lock_and_read`) and the transaction starts with them known;
    elsewhere the transaction reads them itself when it first needs them."""
    others = tuple(sorted({int(n) for n in readable} - {ns_id}))
    todo = sorted(set(keys))
    wanted = None if hashes is None else sorted(set(hashes))
    tx = _open_in_one_trip(db, conn, ns_id, user_id, others, todo, wanted) if db.dialect == "postgresql" else None
    if tx is None:
        head, next_node = lock_namespace(db, conn, ns_id)
        tx = NamespaceTxn(db, conn, ns_id, head, next_node, user_id, readable=others)
    if now is not None:
        tx.now = now
    return tx


def _open_in_one_trip(
    db: Database, conn: Connection, ns_id: int, user_id: int | None, others: tuple[int, ...], todo: list[str],
    wanted: list[str] | None,
) -> NamespaceTxn | None:
    """PostgreSQL: `open_txn` with its first reads in the lock's round trip; None when they are
    too many for one (`cubby.metadata.pgtrips.MAX_READ`)."""
    from cubby.metadata import pgtrips

    if len(todo) > pgtrips.MAX_READ or len(wanted or ()) > pgtrips.MAX_READ:
        return None
    row, found_nodes, found_chunks = pgtrips.lock_and_read(conn, ns_id, todo, [ns_id, *others], wanted)
    head, next_node = _checked(ns_id, row)
    tx = NamespaceTxn(db, conn, ns_id, head, next_node, user_id, readable=others)
    tx.cache.update(dict.fromkeys(todo))
    tx.cache.update((n.path_key, n) for n in found_nodes)
    if wanted:
        tx.checked.update(wanted)
        tx.note_chunks(found_chunks)
    return tx


def lock_namespaces(db: Database, conn: Connection, ns_ids: Iterable[int], user_id: int | None) -> dict[int, NamespaceTxn]:
    """Lock several namespaces on one connection in ascending id order (so two such
    transactions never deadlock) and open a `NamespaceTxn` on each. Only while they share a
    database: see the module docstring."""
    return {ns: open_txn(db, conn, ns, user_id) for ns in sorted(set(ns_ids))}


def finish_all(txs: dict[int, NamespaceTxn]) -> dict[int, int]:
    """`NamespaceTxn.finish` each; answers namespace -> new head."""
    heads = {}
    for ns, tx in txs.items():
        tx.finish()
        heads[ns] = tx.head
    return heads


def write_namespace(
    db: Database, ns_id: int, user_id: int | None, fn: Callable[[NamespaceTxn], T], readable: Iterable[int] = (),
    *, keys: Iterable[str] = (), hashes: Iterable[str] | None = None,
) -> T:
    """Run ``fn(txn)`` in one transaction of ``db`` holding the namespace's lock, and commit
    what it wrote (a raise rolls everything back, journal ids with it). ``keys`` and
    ``hashes``: what ``fn`` reads first (`open_txn`). On PostgreSQL, when this is the thread's
    outermost write, the last write and the COMMIT go in one round trip (`NamespaceTxn.finish`)."""
    commit = db.dialect == "postgresql" and not db.writing()
    keys = tuple(keys)  # read again if a deadlock makes `Database.write` run the transaction again
    hashes = None if hashes is None else tuple(hashes)

    def run(conn: Connection) -> T:
        tx = open_txn(db, conn, ns_id, user_id, readable=readable, keys=keys, hashes=hashes)
        result = fn(tx)
        tx.finish(commit=commit)
        return result

    return db.write(run)


__all__ = [
    "NODE_COLUMNS",
    "ROOT_NODE",
    "NamespaceTxn",
    "entry_of",
    "finish_all",
    "key_range",
    "lock_namespace",
    "lock_namespaces",
    "open_txn",
    "root_entry",
    "write_namespace",
]
