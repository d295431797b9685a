"""Copy one namespace's rows from one shard database to another, while it is being written.

A namespace moves between shards (`cubby.metadata.rebalance`) by copying its rows in three
kinds of pass, each idempotent (a pass run twice, or after a crash, leaves the same copy):

- `copy_all`: every row, in primary-key batches of `BATCH`, each batch its own transaction on
  either side, while writers go on committing on the source. It first reads the source's
  ``(head, next_node)``: the *mark* from which the next pass starts.
- `copy_changes`: the rows that changed after a mark. Run once unlocked (catching up with what
  the bulk copy missed) and then once more inside the source transaction that holds the
  namespace's lock and seals it, where it copies the last changes while writers wait.
- `delete_all`: remove the namespace's rows from one database (the old copy after the move,
  or the new one when a move is undone).

What "changed after mark ``(head, next_node)``" means, from the journal (every write is one
transaction that journals at least one entry with ids above ``head``):

- ``nodes``: rows with ``rev > head`` (every node a write touches directly gets the write's
  journal id); rows with ``node_id >= next_node`` (created since, including a cross-namespace
  move's *pending* nodes, which have ``rev`` 0 and no journal entry); every pending row (a move
  may have finished or been rolled back since); and every row within a folder's subtree named
  by a journal entry since (a folder renamed rewrites its descendants' paths, a folder deleted
  or shared marks them deleted, without touching their ``rev``: the journal names the folder).
  Rows deleted outright (a rolled-back move's pending nodes) vanish from the copy because all
  pending rows are replaced.
- ``file_revs``: the revisions of the nodes above, those with ``rev > head``, and the
  placeholders (``rev < 0``) of pending nodes (history pruned by ``forget_through`` belongs to
  a deleted folder's subtree, so its nodes are among the above).
- ``journal``: ``jid > head`` (the journal is only ever appended to).
- ``ns_chunks``: rows touched since the mark's wall-clock time minus `CLOCK_SLACK` (every
  change of ``refs`` sets ``touched_at``), of which only those the copy does not hold as they
  are; the collector only deletes rows with no references, which a copy may keep without harm
  (the new shard's collector handles them).
- ``namespaces``, ``members``, ``links``, ``move_intents``: small; replaced whole every pass.

The locked pass then compares each table's row count on both sides and copies a table whole
when they differ: a safety net for a change the rules above would miss, paid for only then.

The copy's ``namespaces`` row is written *sealed*: until the move makes it the namespace's
copy (`unseal`, just before the placement names it), anything that reaches it without going
through the placement (a lookup that asks every shard in turn, as links do) is refused like
a write to the old sealed copy, instead of writing where the next pass would overwrite it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, delete, func, insert, or_, select, true, update
from sqlalchemy.engine import Connection

from cubby.core import paths
from cubby.metadata.engine import Database
from cubby.metadata.nstxn import key_range
from cubby.metadata.schema import (
    file_revs,
    journal,
    links,
    members,
    move_intents,
    namespaces,
    nodes,
    ns_chunks,
)

BATCH = 1000
"""Rows per statement and per bulk-copy transaction."""

CLOCK_SLACK = 300.0
"""Seconds by which a writer's clock (``ns_chunks.touched_at``) may lag the mover's."""

NS_TABLES: tuple[Table, ...] = (namespaces, nodes, file_revs, journal, ns_chunks, members, move_intents, links)
"""Every table whose rows belong to one namespace and live on its shard, in copy order."""

_PAGE_KEY: dict[str, str] = {
    "namespaces": "ns_id", "nodes": "node_id", "file_revs": "rev", "journal": "jid", "ns_chunks": "hash",
    "members": "user_id", "move_intents": "intent_id", "links": "link_id",
}
"""The column (after ``ns_id``) that orders and pages each table: unique within a namespace."""

_SMALL = ("namespaces", "members", "move_intents", "links")
"""Tables replaced whole at every pass."""

Progress = Callable[[str, int], None]
"""Called with (table, rows copied so far in this pass): the command prints it."""


@dataclass(frozen=True)
class Mark:
    """Where a pass got to: the source's journal head and node counter, and the wall-clock
    time just before they were read."""

    head: int
    next_node: int
    at: float


def _rows(conn: Connection, table: Table, where: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(select(table).where(where))]


def _insert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    for i in range(0, len(rows), BATCH):
        conn.execute(insert(table), list(rows[i : i + BATCH]))


def _mark(conn: Connection, ns_id: int) -> Mark | None:
    at = time.time()
    row = conn.execute(select(namespaces.c.head, namespaces.c.next_node).where(namespaces.c.ns_id == ns_id)).first()
    return None if row is None else Mark(int(row[0]), int(row[1]), at)


def read_mark(db: Database, ns_id: int) -> Mark | None:
    """The source's mark now (None if it holds no such namespace)."""
    return db.read(lambda c: _mark(c, ns_id))


def holds(db: Database, ns_id: int) -> bool:
    """Whether ``db`` has a ``namespaces`` row for ``ns_id``."""
    return db.read(
        lambda c: c.execute(select(namespaces.c.ns_id).where(namespaces.c.ns_id == ns_id)).first()
    ) is not None


def delete_all(db: Database, ns_id: int) -> int:
    """Delete every row of ``ns_id`` from ``db`` (big tables in batches, the ``namespaces``
    row last, so that a crash midway leaves a row that says there is more to delete).
    Answers how many rows went."""
    gone = 0
    for table in reversed(NS_TABLES):
        if table is namespaces:
            continue
        key = table.c[_PAGE_KEY[table.name]]
        while True:
            def one(conn: Connection, table: Table = table, key: Any = key) -> int:
                # From the top down: a reader still routed here sees a prefix of the journal
                # (its cursor then moves on at the new shard), never a suffix with a gap.
                ids = [
                    r[0] for r in conn.execute(select(key).where(table.c.ns_id == ns_id).order_by(key.desc()).limit(BATCH))
                ]
                if not ids:
                    return 0
                return int(conn.execute(delete(table).where(table.c.ns_id == ns_id, key.in_(ids))).rowcount)

            n = db.write(one)
            gone += n
            if n == 0:
                break
    gone += int(db.write(lambda c: c.execute(delete(namespaces).where(namespaces.c.ns_id == ns_id)).rowcount))
    return gone


def set_sealed(db: Database, ns_id: int, sealed: bool) -> None:
    """Seal or unseal ``db``'s copy of ``ns_id`` (on its own, outside any move step's lock)."""
    db.write(lambda c: c.execute(update(namespaces).where(namespaces.c.ns_id == ns_id).values(sealed=sealed)))


def copy_all(src: Database, dst: Database, ns_id: int, progress: Progress | None = None) -> Mark:
    """Copy every row of ``ns_id`` from ``src`` to ``dst`` (replacing whatever ``dst`` held of
    it), in batches while writers go on; answers the mark read before the first batch. The
    ``namespaces`` row is copied first, so that a half copy is found (and deleted) by `holds`."""
    mark = read_mark(src, ns_id)
    if mark is None:
        raise LookupError(f"namespace {ns_id} is not on the source shard")
    delete_all(dst, ns_id)
    # Rows added after the mark are left to `copy_changes`: a copy that chased them could run
    # as long as writers keep adding.
    upto = {"nodes": nodes.c.node_id < mark.next_node, "file_revs": file_revs.c.rev <= mark.head,
            "journal": journal.c.jid <= mark.head}
    for table in NS_TABLES:
        key = table.c[_PAGE_KEY[table.name]]
        last: Any = None
        done = 0
        while True:
            cond = and_(table.c.ns_id == ns_id, upto.get(table.name, true()))
            if last is not None:
                cond = and_(cond, key > last)
            rows = src.read(_page(table, key, cond))
            if not rows:
                break
            if table is namespaces:
                rows = [{**r, "sealed": True} for r in rows]  # see the module docstring
            dst.write(_inserter(table, rows))
            last = rows[-1][key.name]
            done += len(rows)
            if progress is not None:
                progress(table.name, done)
    return mark


def _page(table: Table, key: Any, cond: Any) -> Callable[[Connection], list[dict[str, Any]]]:
    def run(conn: Connection) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in conn.execute(select(table).where(cond).order_by(key).limit(BATCH))]

    return run


def _inserter(table: Table, rows: list[dict[str, Any]]) -> Callable[[Connection], None]:
    return lambda conn: _insert(conn, table, rows)


def _folder_ops(conn: Connection, ns_id: int, since: int) -> list[str]:
    """Path keys of the folders (and mounts) that journal entries after ``since`` name, outermost
    only: their subtrees hold every node such an entry may have changed without its ``rev``."""
    keys: set[str] = set()
    for path, old_path in conn.execute(
        select(journal.c.path, journal.c.old_path).where(
            journal.c.ns_id == ns_id, journal.c.jid > since, journal.c.kind != "file"
        )
    ):
        for p in (path, old_path):
            if p is not None:
                keys.add(paths.key(p))
    outer: list[str] = []
    for k in sorted(keys):  # a parent sorts before its children
        if not any(k == o or k.startswith(o.rstrip("/") + "/") for o in outer):
            outer.append(k)
    return outer


def _changed_node_ids(conn: Connection, ns_id: int, mark: Mark) -> set[int]:
    ids: set[int] = set()
    base = nodes.c.ns_id == ns_id
    direct = or_(nodes.c.rev > mark.head, nodes.c.node_id >= mark.next_node, nodes.c.pending.is_not(None))
    ids.update(int(r[0]) for r in conn.execute(select(nodes.c.node_id).where(base, direct)))
    folders = _folder_ops(conn, ns_id, mark.head)
    for i in range(0, len(folders), 50):
        conds = []
        for k in folders[i : i + 50]:
            lo, hi = key_range(k)
            for col in (nodes.c.path_key, nodes.c.deleted_key):
                conds.append(col == k)
                conds.append(and_(col > lo, col < hi))
        ids.update(int(r[0]) for r in conn.execute(select(nodes.c.node_id).where(base, or_(*conds))))
    return ids


def copy_changes(
    src_conn: Connection, dst: Database, ns_id: int, since: Mark, *, verify: bool = False
) -> Mark:
    """Copy to ``dst`` what changed in ``ns_id`` after ``since``, reading the source through
    ``src_conn`` (inside the source transaction that holds the namespace's lock, for the last
    pass). The whole change is one ``dst`` transaction. With ``verify``, tables whose row counts
    then differ are copied whole (see the module docstring). Answers the new mark."""
    now = _mark(src_conn, ns_id)
    if now is None:
        raise LookupError(f"namespace {ns_id} is not on the source shard")
    ns = nodes.c.ns_id == ns_id
    ids = sorted(_changed_node_ids(src_conn, ns_id, since))
    node_rows: list[dict[str, Any]] = []
    rev_rows: list[dict[str, Any]] = []
    for i in range(0, len(ids), BATCH):
        part = ids[i : i + BATCH]
        node_rows += _rows(src_conn, nodes, and_(ns, nodes.c.node_id.in_(part)))
        rev_rows += _rows(src_conn, file_revs, and_(file_revs.c.ns_id == ns_id, file_revs.c.node_id.in_(part)))
    seen = {(r["node_id"], r["rev"]) for r in rev_rows}
    rev_rows += [
        r for r in _rows(src_conn, file_revs, and_(file_revs.c.ns_id == ns_id, or_(file_revs.c.rev > since.head, file_revs.c.rev < 0)))
        if (r["node_id"], r["rev"]) not in seen
    ]
    journal_rows = _rows(src_conn, journal, and_(journal.c.ns_id == ns_id, journal.c.jid > since.head))
    touched = _rows(src_conn, ns_chunks, and_(ns_chunks.c.ns_id == ns_id, ns_chunks.c.touched_at >= since.at - CLOCK_SLACK))
    chunk_rows = _differing(dst, ns_id, touched)
    small = {name: _rows(src_conn, t, t.c.ns_id == ns_id) for t in NS_TABLES if (name := t.name) in _SMALL}
    small["namespaces"] = [{**r, "sealed": True} for r in small["namespaces"]]

    def write(conn: Connection) -> None:
        for name in _SMALL:
            t = _table(name)
            conn.execute(delete(t).where(t.c.ns_id == ns_id))
            _insert(conn, t, small[name])
        # Nodes: the changed ones, every pending one and every one created since (a rolled-back
        # pending node is gone from the source and must go here too).
        for part in _parts(ids):
            conn.execute(delete(nodes).where(ns, nodes.c.node_id.in_(part)))
        conn.execute(delete(nodes).where(ns, or_(nodes.c.pending.is_not(None), nodes.c.node_id >= since.next_node)))
        for part in _parts(ids):
            conn.execute(delete(file_revs).where(file_revs.c.ns_id == ns_id, file_revs.c.node_id.in_(part)))
        conn.execute(
            delete(file_revs).where(file_revs.c.ns_id == ns_id, or_(file_revs.c.rev > since.head, file_revs.c.rev < 0))
        )
        conn.execute(delete(journal).where(journal.c.ns_id == ns_id, journal.c.jid > since.head))
        for part in _parts([r["hash"] for r in chunk_rows]):
            conn.execute(delete(ns_chunks).where(ns_chunks.c.ns_id == ns_id, ns_chunks.c.hash.in_(part)))
        _insert(conn, nodes, node_rows)
        _insert(conn, file_revs, rev_rows)
        _insert(conn, journal, journal_rows)
        _insert(conn, ns_chunks, chunk_rows)
        if verify:
            for t in NS_TABLES:
                if t.name in _SMALL:
                    continue
                theirs = src_conn.execute(select(func.count()).select_from(t).where(t.c.ns_id == ns_id)).scalar_one()
                ours = conn.execute(select(func.count()).select_from(t).where(t.c.ns_id == ns_id)).scalar_one()
                if theirs != ours:
                    conn.execute(delete(t).where(t.c.ns_id == ns_id))
                    _insert(conn, t, _rows(src_conn, t, t.c.ns_id == ns_id))

    dst.write(write)
    return now


def _differing(dst: Database, ns_id: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``ns_chunks`` rows among ``rows`` that ``dst`` does not hold as they are: the
    window of `CLOCK_SLACK` makes every pass see the same recently touched rows again, and
    writing them again would lengthen the locked pass for nothing."""
    if not rows:
        return rows
    held: dict[str, tuple[Any, Any]] = {}

    def read(conn: Connection) -> None:
        for part in _parts([r["hash"] for r in rows]):
            for h, refs, at in conn.execute(
                select(ns_chunks.c.hash, ns_chunks.c.refs, ns_chunks.c.touched_at).where(
                    ns_chunks.c.ns_id == ns_id, ns_chunks.c.hash.in_(part)
                )
            ):
                held[h] = (refs, at)

    dst.read(read)
    return [r for r in rows if held.get(r["hash"]) != (r["refs"], r["touched_at"])]


def _parts(items: Iterable[Any]) -> Iterable[list[Any]]:
    items = list(items)
    for i in range(0, len(items), BATCH):
        yield items[i : i + BATCH]


def _table(name: str) -> Table:
    return next(t for t in NS_TABLES if t.name == name)


def rows_of(db: Database, ns_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``ns_id`` in ``db``, table by table, sorted (tests compare two copies;
    ``namespaces.sealed`` left out, since the old copy is sealed and the new one is not)."""

    def run(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
        out = {}
        for t in NS_TABLES:
            cols = [c for c in t.c if c.name != "sealed"]
            out[t.name] = sorted(
                (tuple(r) for r in conn.execute(select(*cols).where(t.c.ns_id == ns_id))), key=repr
            )
        return out

    return db.read(run)


__all__ = [
    "BATCH", "NS_TABLES", "Mark", "Progress", "copy_all", "copy_changes", "delete_all", "holds", "read_mark", "rows_of",
    "set_sealed",
]
