"""Moves between namespaces (out of a shared folder, into one, or between two), with an intent
record so that a crash at any point leaves the item in exactly one place.

No transaction spans two namespaces (they may live on different database shards), so a move is
four transactions, each holding one namespace's lock:

1. source: check the item, write an intent ``started`` (keyed by the source namespace) that
   remembers the source's journal head;
2. destination: create the item's nodes *pending* (no path key, so no reader or writer sees
   them; tagged with the intent id; idempotent), with their current revisions under
   placeholder ids, and make the chunks usable there (no chunk moves);
3. source: if nothing below the item changed since step 1, remove it (journalled as a delete)
   and mark the intent ``removed``: this commit is the point of no return;
4. destination: give the pending nodes their revisions, path keys and journal entries;
   then, in the source, delete the intent.

Recovery (`CrossMoves.recover`, at server start and before each move) rolls an abandoned intent
``started`` back (drop the pending nodes: the item never left the source) and an abandoned
intent ``removed`` forward (finish step 4). Either way the item ends in exactly one of the two
namespaces. An intent is abandoned only when its owner is gone (`cubby.metadata.leases`): its
lease ran out, or the process that wrote it no longer exists on this machine. A live move of
another process, between two of its steps, is never touched.

If the destination path was taken between steps 2 and 4, the item lands beside it as
``name (1)``, ``name (2)``…: by then it has left the source and must land somewhere.

Across shards: every step runs on its own namespace's database (`ShardRouter.db_for`): steps
1 and 3 and the intent row on the source's shard, steps 2 and 4 on the destination's. Step 2
reads the source's nodes and revisions on the source's database, then writes the destination
in a transaction of its own (a change to the source in between is what step 3 refuses), and
`recover` scans the intents of every shard.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from cubby.core import paths
from cubby.errors import BadRequest, Conflict, CubbyError, NamespaceMoved, NotFound, Unavailable
from cubby.metadata.chunks import make_available
from cubby.metadata.engine import Database
from cubby.metadata.leases import Owner
from cubby.metadata.nstxn import NamespaceTxn, entry_of, key_range, lock_namespace, open_txn
from cubby.metadata.schema import file_revs, journal, move_intents, nodes
from cubby.metadata.shardchunks import touch_chunks
from cubby.metadata.shards import ShardRouter
from cubby.metadata.tree import (
    ensure_folder,
    frozen_or_mount_below,
    guard_mounts,
    is_frozen,
    remove_node,
    same_as_before_share,
)
from cubby.model import Entry

STEPS = ("intent", "pending", "removed", "visible")
"""Fault hook points: after each of the four steps commits."""

FaultHook = Callable[[str], None]
"""Called with a step name after that step committed; tests use it to kill the process."""

class CrossMoves:
    """Cross-namespace moves on one metadata database (reached as ``store.moves``); ``stat``
    reads where a move that recovery finished has landed."""

    def __init__(
        self, db: Database, stat: Callable[[int, str], Entry], fault: FaultHook | None = None,
        router: ShardRouter | None = None,
    ) -> None:
        self.db = db
        self.router = router or ShardRouter(db)
        """Which database holds each namespace: every step runs on its own namespace's."""
        self.stat = stat
        self.fault = fault
        self.owner = Owner.this_process()

    def _step(self, name: str) -> None:
        if self.fault is not None:
            self.fault(name)

    # ------------------------------------------------------------------------------------------
    def move(
        self, user_id: int, src_ns: int, src: str, dst_ns: int, dst: str, expected_rev: int | None = None
    ) -> Entry:
        """Move the file or folder at ``src`` of ``src_ns`` to ``dst`` of ``dst_ns`` (see the
        module docstring). Metadata only: the chunks are already held, so none moves."""
        src, dst = paths.normalize(src), paths.normalize(dst)
        if paths.ROOT in (src, dst):
            raise BadRequest("the root cannot be moved, nor anything moved onto it")
        if src_ns == dst_ns:
            raise BadRequest("not a move between namespaces")
        self.recover()
        intent = secrets.token_hex(16)

        # 1. the intent, in the source
        src_db = self.router.db_for(src_ns)

        def step1(conn: Connection) -> tuple[int, str]:
            tx = open_txn(src_db, conn, src_ns, user_id)
            guard_mounts(tx, src)
            row = tx.live(paths.key(src))
            if row is None:
                raise NotFound(f"{src} does not exist")
            if row.kind == "mount":
                raise BadRequest("a shared folder cannot be put inside another shared folder", code="nested_share")
            if expected_rev is not None and row.rev != expected_rev and not same_as_before_share(
                tx, row, expected_rev
            ):
                raise Conflict(f"{row.path} changed: it is at revision {row.rev}, not {expected_rev}", current_rev=row.rev)
            if is_frozen(row):
                raise NamespaceMoved(f"{row.path} is becoming a shared folder; retry in a moment", path=row.path)
            if row.kind == "folder" and frozen_or_mount_below(tx, paths.key(src)):
                raise Conflict(f"{row.path} holds a shared folder; shared folders cannot nest", code="contains_shared_folder")
            conn.execute(
                insert(move_intents).values(
                    ns_id=src_ns, intent_id=intent, dst_ns=dst_ns, src_path=row.path, dst_path=dst,
                    node_id=row.node_id, state="started", user_id=user_id, created_at=time.time(),
                    owner=str(self.owner), lease_until=self.owner.lease_until(),
                )
            )
            # The source's journal head at the intent: step 3 checks that nothing changed since.
            return tx.head, str(row.path)

        since, src_path = src_db.write(step1)
        self._step("intent")

        # 2. pending nodes in the destination
        try:
            self._renew(src_ns, intent)
            self._make_pending(intent, user_id, src_ns, src_path, dst_ns, dst)
        except Exception:
            self._roll_back(src_ns, intent)
            raise
        self._step("pending")

        # 3. remove from the source: the point of no return
        def step3(conn: Connection) -> None:
            tx = open_txn(src_db, conn, src_ns, user_id)
            it = conn.execute(
                select(move_intents).where(move_intents.c.ns_id == src_ns, move_intents.c.intent_id == intent)
            ).first()
            if it is None or it.state != "started" or it.owner != str(self.owner):
                raise Unavailable("the move was interrupted and undone; try again")
            if self._changed_since(conn, src_ns, src_path, since):
                raise Conflict(f"{src_path} changed while it was being moved; try again", code="moved_item_changed")
            self._remove_source(tx, src_path)
            conn.execute(
                update(move_intents)
                .where(move_intents.c.ns_id == src_ns, move_intents.c.intent_id == intent)
                .values(state="removed", lease_until=self.owner.lease_until())
            )
            tx.finish()

        try:
            src_db.write(step3)
        except Conflict:
            self._roll_back(src_ns, intent)
            raise
        self._step("removed")

        # 4. visible in the destination, then the intent goes
        entry = self._finish(src_ns, intent)
        return entry

    def _renew(self, src_ns: int, intent: str) -> None:
        """Extend this process's lease on ``intent``; if recovery took it over meanwhile (this
        process stalled past its lease), stop: the move was undone."""

        def run(conn: Connection) -> int:
            return conn.execute(
                update(move_intents)
                .where(move_intents.c.ns_id == src_ns, move_intents.c.intent_id == intent)
                .where(move_intents.c.owner == str(self.owner), move_intents.c.state == "started")
                .values(lease_until=self.owner.lease_until())
            ).rowcount

        if self.router.db_for(src_ns).write(run) != 1:
            raise Unavailable("the move was interrupted and undone; try again")

    # ------------------------------------------------------------------------------------------
    def _make_pending(self, intent: str, user_id: int, src_ns: int, src_path: str, dst_ns: int, dst: str) -> None:
        """Step 2: read the item on the source's database, then write it pending on the
        destination's (two databases when they are on different shards; the source may
        change in between, which step 3 finds and refuses)."""
        src_key = paths.key(src_path)
        lo, hi = key_range(src_key)

        def read(conn: Connection) -> tuple[list[Any], dict[int, Any]]:
            rows = conn.execute(
                select(nodes)
                .where(nodes.c.ns_id == src_ns, nodes.c.path_key.is_not(None))
                .where((nodes.c.path_key == src_key) | ((nodes.c.path_key > lo) & (nodes.c.path_key < hi)))
                .order_by(nodes.c.path_key)
            ).all()
            revs: dict[int, Any] = {}
            for n in rows:
                if n.kind == "file":
                    revs[int(n.node_id)] = conn.execute(
                        select(file_revs).where(
                            file_revs.c.ns_id == src_ns, file_revs.c.node_id == n.node_id, file_revs.c.rev == n.content_rev
                        )
                    ).one()
            return list(rows), revs

        rows, revs = self.router.db_for(src_ns).read(read)
        dst_db = self.router.db_for(dst_ns)
        if not self.router.single:
            # The destination will name these chunks: touch them on the chunk database first
            # (`cubby.metadata.shardchunks`), so the collector cannot take them meanwhile.
            touch_chunks(self.router.chunks, sorted({c[0] for fr in revs.values() for c in json.loads(fr.blocklist)}))
        dst_db.write(lambda conn: self._write_pending(conn, dst_db, intent, user_id, rows, revs, src_path, dst_ns, dst))

    def _write_pending(
        self, conn: Connection, db: Database, intent: str, user_id: int, rows: list[Any], revs: dict[int, Any],
        src_path: str, dst_ns: int, dst: str,
    ) -> None:
        tx = open_txn(db, conn, dst_ns, user_id)
        if conn.execute(select(nodes.c.node_id).where(nodes.c.ns_id == dst_ns, nodes.c.pending == intent).limit(1)).first():
            return  # done before
        guard_mounts(tx, dst)
        if tx.live(paths.key(dst)) is not None:
            raise Conflict(f"{dst} already exists", code="destination_exists")
        parent = tx.live(paths.key(paths.split(dst)[0])) if paths.split(dst)[0] != paths.ROOT else None
        if parent is not None and parent.kind != "folder":
            raise Conflict(f"{parent.path} is not a folder", code="not_a_folder")
        if not rows:
            raise NotFound(f"{src_path} does not exist")
        ids: dict[int, int] = {}
        node_rows: list[dict[str, Any]] = []
        rev_rows: list[dict[str, Any]] = []
        hashes: set[str] = set()
        for n in rows:
            nid = tx.new_node_id()
            ids[int(n.node_id)] = nid
            new_path = paths.check_length(paths.rebase(n.path, src_path, dst))
            parent_id = ids.get(int(n.parent_id), 0)
            is_file = n.kind == "file"
            node_rows.append(
                {
                    "ns_id": dst_ns, "node_id": nid, "parent_id": parent_id, "name": paths.split(new_path)[1], "path": new_path,
                    "path_key": None, "kind": n.kind, "rev": 0, "content_rev": -nid if is_file else None, "size": n.size,
                    "content_hash": n.content_hash, "mtime": n.mtime, "deleted": True, "deleted_key": None, "target_ns": None,
                    "pending": intent, "mode": n.mode,
                }
            )
            if is_file:
                fr = revs[int(n.node_id)]
                rev_rows.append(
                    {
                        "ns_id": dst_ns, "node_id": nid, "rev": -nid, "path": new_path, "size": fr.size, "content_hash": fr.content_hash,
                        "blocklist": fr.blocklist, "mtime": fr.mtime, "user_id": user_id, "created_at": tx.now, "mode": fr.mode,
                    }
                )
                hashes.update(c[0] for c in json.loads(fr.blocklist))
        for i in range(0, len(node_rows), 1000):
            conn.execute(insert(nodes), node_rows[i : i + 1000])
        for i in range(0, len(rev_rows), 1000):
            conn.execute(insert(file_revs), rev_rows[i : i + 1000])
        if hashes:
            make_available(db, conn, dst_ns, sorted(hashes), tx.now)
        tx.finish()

    def _changed_since(self, conn: Connection, ns_id: int, path: str, since: int) -> bool:
        """Whether any change after journal id ``since`` touched ``path`` or anything below it."""
        for e in conn.execute(
            select(journal.c.path, journal.c.old_path).where(journal.c.ns_id == ns_id, journal.c.jid > since)
        ):
            for p in (e.path, e.old_path):
                if p is not None and (paths.is_within(p, path) or paths.is_within(path, p)):
                    return True
        return False

    def _remove_source(self, tx: NamespaceTxn, path: str) -> None:
        row = tx.live(paths.key(path))
        assert row is not None
        remove_node(tx, row)

    def _make_visible(self, conn: Connection, intent: str, dst_ns: int, user_id: int | None) -> Entry | None:
        """Step 4 in the destination (idempotent: nothing to do once the nodes are visible)."""
        tx = open_txn(self.router.db_for(dst_ns), conn, dst_ns, user_id)
        rows = conn.execute(
            select(nodes).where(nodes.c.ns_id == dst_ns, nodes.c.pending == intent).order_by(nodes.c.path)
        ).all()
        if not rows:
            return None
        by_id = {int(r.node_id): r for r in rows}
        top = next(r for r in rows if int(r.parent_id) not in by_id)
        parent, name = paths.split(top.path)
        try:
            parent_id, parent_path = ensure_folder(tx, parent)
        except (NamespaceMoved, Conflict):
            # The destination folder became a shared folder (or a file) since step 2: the item
            # has left its source, so it lands at the top of the destination instead.
            tx.forget()
            parent_id, parent_path = 0, paths.ROOT
        final = paths.join(parent_path, name)
        i = 0
        while tx.live(paths.key(final)) is not None:
            i += 1
            stem, dot, ext = name.rpartition(".") if "." in name.strip(".") else (name, "", "")
            final = paths.join(parent_path, paths.fit_name(stem, f" ({i})", dot + ext) if dot else paths.fit_name(name, f" ({i})"))
        tx.flush()
        ordered = sorted(rows, key=lambda r: paths.key(paths.rebase(r.path, top.path, final)))
        for r in ordered:
            new_path = paths.rebase(r.path, top.path, final)
            jid = tx.next_jid()
            pid = parent_id if r.node_id == top.node_id else int(r.parent_id)
            is_file = r.kind == "file"
            conn.execute(
                update(nodes)
                .where(nodes.c.ns_id == dst_ns, nodes.c.node_id == r.node_id)
                .values(
                    parent_id=pid, name=paths.split(new_path)[1], path=new_path, path_key=paths.key(new_path),
                    deleted=False, rev=jid, content_rev=jid if is_file else None, pending=None,
                )
            )
            if is_file:
                conn.execute(
                    update(file_revs)
                    .where(file_revs.c.ns_id == dst_ns, file_revs.c.rev == -int(r.node_id))
                    .values(rev=jid, path=new_path)
                )
                bl = conn.execute(
                    select(file_revs.c.blocklist).where(file_revs.c.ns_id == dst_ns, file_revs.c.rev == jid)
                ).one()
                tx.add_refs(c[0] for c in json.loads(bl[0]))
            tx.journal(
                "add" if is_file else "mkdir", node_id=int(r.node_id), parent_id=pid, kind=r.kind, path=new_path,
                rev=jid, size=r.size, content_hash=r.content_hash, mtime=r.mtime, mode=r.mode,
            )
        tx.finish()
        moved = conn.execute(select(nodes).where(nodes.c.ns_id == dst_ns, nodes.c.node_id == top.node_id)).one()
        return entry_of(moved)

    def _finish(self, src_ns: int, intent: str) -> Entry:
        src_db = self.router.db_for(src_ns)
        it = src_db.read(
            lambda c: c.execute(
                select(move_intents).where(move_intents.c.ns_id == src_ns, move_intents.c.intent_id == intent)
            ).first()
        )
        assert it is not None
        dst_db = self.router.db_for(int(it.dst_ns))
        entry = dst_db.write(lambda conn: self._make_visible(conn, intent, int(it.dst_ns), it.user_id))
        self._step("visible")
        src_db.write(
            lambda conn: conn.execute(
                delete(move_intents).where(move_intents.c.ns_id == src_ns, move_intents.c.intent_id == intent)
            )
        )
        if entry is None:  # made visible by someone else (recovery): read where it is
            entry = self.stat(int(it.dst_ns), str(it.dst_path))
        return entry

    def _roll_back(self, src_ns: int, intent: str) -> None:
        """Undo an intent that never reached step 3: drop pending nodes, then the intent (in
        this order, so that a crash in between leaves the intent to be rolled back again)."""
        src_db = self.router.db_for(src_ns)

        def in_source(conn: Connection) -> Any:
            lock_namespace(src_db, conn, src_ns)
            it = conn.execute(
                select(move_intents).where(move_intents.c.ns_id == src_ns, move_intents.c.intent_id == intent)
            ).first()
            if it is None or it.state != "started":
                return None
            # Past this point step 3 can no longer happen for this intent.
            conn.execute(
                update(move_intents)
                .where(move_intents.c.ns_id == src_ns, move_intents.c.intent_id == intent)
                .values(state="undoing")
            )
            return int(it.dst_ns)

        dst_ns = src_db.write(in_source)
        if dst_ns is None:
            it = src_db.read(
                lambda c: c.execute(
                    select(move_intents.c.state, move_intents.c.dst_ns)
                    .where(move_intents.c.ns_id == src_ns, move_intents.c.intent_id == intent)
                ).first()
            )
            if it is None or it.state != "undoing":
                return
            dst_ns = int(it.dst_ns)

        dst_db = self.router.db_for(dst_ns)

        def in_destination(conn: Connection) -> None:
            lock_namespace(dst_db, conn, dst_ns)
            gone = [
                int(r[0])
                for r in conn.execute(select(nodes.c.node_id).where(nodes.c.ns_id == dst_ns, nodes.c.pending == intent))
            ]
            for i in range(0, len(gone), 500):
                part = gone[i : i + 500]
                conn.execute(delete(file_revs).where(file_revs.c.ns_id == dst_ns, file_revs.c.rev.in_([-n for n in part])))
                conn.execute(delete(nodes).where(nodes.c.ns_id == dst_ns, nodes.c.node_id.in_(part)))

        dst_db.write(in_destination)
        src_db.write(
            lambda conn: conn.execute(
                delete(move_intents).where(move_intents.c.ns_id == src_ns, move_intents.c.intent_id == intent)
            )
        )

    # ------------------------------------------------------------------------------------------
    def recover(self, around: Callable[[list[int]], AbstractContextManager[object]] | None = None) -> int:
        """Finish or undo every move whose owner is gone (see `cubby.metadata.leases`):
        ``started`` (or ``undoing``) is rolled back, ``removed`` rolled forward. Returns how
        many intents were handled. Safe to run at any time, from any process, more than once.
        An intent that cannot be handled now stays for the next run; the first such error is
        raised after all the others were handled. ``around`` wraps the handling of each intent
        with its source and destination namespaces (the metadata cache fences and invalidates
        their heads there, as around any other write)."""
        now = time.time()
        rows: list[Any] = []
        seen: set[int] = set()
        for db in self.router.shards.values():  # each shard holds the intents of its sources
            if id(db) in seen:
                continue
            seen.add(id(db))
            rows += db.read(
                lambda c: c.execute(
                    select(
                        move_intents.c.ns_id, move_intents.c.intent_id, move_intents.c.state,
                        move_intents.c.owner, move_intents.c.lease_until, move_intents.c.dst_ns,
                    )
                ).all()
            )
        todo = [(ns_id, intent, state, dst) for ns_id, intent, state, owner, lease, dst in rows
                if self.owner.is_gone(owner, lease, now)]
        failed: list[CubbyError] = []
        for ns_id, intent, state, dst in todo:
            try:
                with around([int(ns_id), int(dst)]) if around else nullcontext():
                    if state == "removed":
                        self._finish(int(ns_id), str(intent))
                    else:
                        self._roll_back(int(ns_id), str(intent))
            except CubbyError as exc:
                failed.append(exc)
        if failed:
            raise failed[0]
        return len(todo)


__all__ = ["STEPS", "CrossMoves", "FaultHook"]
