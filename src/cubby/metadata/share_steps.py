"""Sharing a folder when its new namespace lives on another shard than the owner's root.

No transaction spans two databases, so the share is single-database steps tied by an intent
row on the owner's root shard (r); the new namespace S goes to shard s:

1. directory: reserve S's id, placement ``creating`` (`Placement.reserve_namespace`): nobody
   can reach S yet.
2. r, one transaction holding the root's lock: write the intent ``frozen`` (the root's journal
   head is S's base) and freeze the folder (its node's ``pending`` names the intent). From
   this commit on every write below the folder is refused with the retryable
   `NamespaceMoved` (`cubby.metadata.tree.guard_mounts`), and the folder can be neither
   deleted nor moved to another namespace. So what is live below it now is exactly what S
   gets: a delete acknowledged before this step is not among it, and no write lands after it
   without being retried into S.
3. s, one transaction: create S (its journal starts above the root's head at the freeze) and
   copy the frozen folder's live nodes, current revisions, chunk references and links into
   it, with the owner's and the invitee's ``members`` rows and the revisions the copied nodes
   had in the root (``share_origins``: a client's pre-share revision still names the copy).
   Idempotent: a namespace row for S already there means the copy committed whole. Then, in
   the directory, the moved links' ``link_tokens`` name S, and the membership copy of those
   two rows (`sync_memberships`): after the truth, and before the mount, so that the owner's
   requests resolve into S from the moment it is mounted (the owner reaching S by id before
   that reaches a copy of their own folder).
4. r, one transaction: if the intent is still this process's and ``frozen``, turn the folder
   into a mount of S, mark the source nodes gone (their history stays), move its links out,
   journal the mount, and set the intent ``mounted``. This commit is the point of no return.
5. directory: placement ``live`` (and the membership copy again: idempotent); on r, delete
   the intent; last, on s, S is no longer ``settling``, and the share is acknowledged. From
   the mount on, the owner's requests resolve into S; a delete landing there before this step
   was issued before the share was acknowledged, so while S is ``settling`` a delete also
   forgets the history the share copied (as a delete that raced a one-database share does):
   no member ever opens what it deleted.

Recovery (`ShareSteps.recover`, run where moves' recovery runs: at server start and before
each share) takes only intents whose owner is gone (`cubby.metadata.leases`). One still
``frozen`` (or ``undoing``) is undone: set ``undoing`` on r (step 4 can no longer happen),
drop the directory's membership copy, point the links back at R, delete S's copy on s (copy
before truth, so the copy never grants more), drop the reservation, then unfreeze the folder and delete the intent in
one transaction on r. One ``mounted`` runs forward: step 5 again. A namespace left
``settling`` with no intent (a crash between step 5's last two writes) is settled. Either way
the owner ends with either no share (the folder as it was, writes below it allowed again) or a
whole one.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.engine import Connection

from cubby.core import paths
from cubby.errors import Conflict, CubbyError, NamespaceMoved, Unavailable
from cubby.metadata.engine import Database
from cubby.metadata.leases import Owner
from cubby.metadata.nstxn import NamespaceTxn, key_range, lock_namespace, open_txn
from cubby.metadata.schema import (
    file_revs,
    journal,
    link_tokens,
    links,
    members,
    namespaces,
    nodes,
    ns_chunks,
    placements,
    share_intents,
    share_origins,
)
from cubby.metadata.shardchunks import touch_chunks
from cubby.metadata.shards import ShardRouter, allocate_ns_id, drop_memberships, write_membership
from cubby.metadata.subtree import BATCH, read_subtree, write_subtree
from cubby.metadata.tree import folder_to_share, frozen_or_mount_below, is_frozen

Around = Callable[[list[int], list[int]], AbstractContextManager[object]]
"""Wraps the recovery of one intent, given its namespaces and users (the cache's fence)."""

STEPS = ("reserved", "frozen", "copied", "mounted", "published", "released")
"""Fault hook points: after each step commits."""

NS_TABLES = (nodes, file_revs, journal, ns_chunks, members, links, share_origins)
"""The rows of a namespace that an undone share's copy may have written (besides its
``namespaces`` row)."""


@dataclass(frozen=True)
class Shared:
    """What a cross-shard share made: the new namespace, the folder's path, the owner's root
    head after the mount (the mount's journal id), the new namespace's cut (the last journal
    id of the copy) and its head now (above the cut if writes landed since the mount)."""

    ns_id: int
    path: str
    root_head: int
    cut: int
    ns_head: int


class ShareSteps:
    """Cross-shard shares with their intents and recovery (see the module docstring)."""

    def __init__(self, router: ShardRouter, fault: Callable[[str], None] | None = None) -> None:
        self.router = router
        self.fault = fault
        self.owner = Owner.this_process()

    def _step(self, name: str) -> None:
        if self.fault is not None:
            self.fault(name)

    # ------------------------------------------------------------------------------------------
    def share(self, user_id: int, root_ns: int, path: str, invitee_id: int, role: str, shard: str) -> Shared:
        """Turn the folder at ``path`` of ``root_ns`` into a new namespace on ``shard``,
        inviting ``invitee_id`` with ``role``. The caller checked the names and the role."""
        self.recover()
        root_db = self.router.db_for(root_ns)
        new_ns = reserve_namespace(self.router, shard)
        self._step("reserved")
        intent = secrets.token_hex(16)

        # 2. freeze the folder, in the root
        def freeze(conn: Connection) -> None:
            tx = open_txn(root_db, conn, root_ns, user_id)
            row = folder_to_share(tx, path)
            if row.kind == "mount" or is_frozen(row):
                raise NamespaceMoved(f"{row.path} became a shared folder meanwhile; try again", path=row.path)
            if frozen_or_mount_below(tx, paths.key(path)):
                raise Conflict(f"{row.path} holds a shared folder; shared folders cannot nest", code="contains_shared_folder")
            conn.execute(
                insert(share_intents).values(
                    ns_id=root_ns, intent_id=intent, new_ns=new_ns, node_id=row.node_id, path=row.path, shard=shard,
                    state="frozen", base=tx.head, user_id=user_id, invitee_id=invitee_id, role=role,
                    created_at=time.time(), owner=str(self.owner), lease_until=self.owner.lease_until(),
                )
            )
            conn.execute(update(nodes).where(nodes.c.ns_id == root_ns, nodes.c.node_id == row.node_id).values(pending=intent))

        try:
            root_db.write(freeze)
        except BaseException:
            forget_namespace(self.router, new_ns)
            raise
        self._step("frozen")

        # 3. the copy, on the new namespace's shard
        try:
            self._renew(root_ns, intent)
            self._copy(root_ns, intent)
        except Exception:
            self._undo(root_ns, intent)
            raise
        self._step("copied")

        # 4. the mount, in the root: the point of no return
        try:
            root_head, final = root_db.write(lambda conn: self._mount(conn, root_ns, intent))
        except Exception:
            self._undo(root_ns, intent)  # nothing if the mount did commit (the intent is `mounted`)
            raise
        self._step("mounted")

        # 5. published; the intent goes
        cut, ns_head = self._publish(root_ns, intent)
        return Shared(new_ns, final, root_head, cut, ns_head)

    def _intent(self, conn: Connection, root_ns: int, intent: str) -> Any:
        return conn.execute(
            select(share_intents).where(share_intents.c.ns_id == root_ns, share_intents.c.intent_id == intent)
        ).first()

    def _renew(self, root_ns: int, intent: str) -> None:
        """Extend this process's lease; if recovery took the intent over meanwhile (this
        process stalled past its lease), stop: the share is being undone."""
        done = self.router.db_for(root_ns).write(
            lambda conn: conn.execute(
                update(share_intents)
                .where(share_intents.c.ns_id == root_ns, share_intents.c.intent_id == intent)
                .where(share_intents.c.owner == str(self.owner), share_intents.c.state == "frozen")
                .values(lease_until=self.owner.lease_until())
            ).rowcount
        )
        if done != 1:
            raise Unavailable("the share was interrupted and undone; try again")

    def _copy(self, root_ns: int, intent: str) -> None:
        """Step 3 (idempotent): read the frozen folder on r, write S on s."""
        root_db = self.router.db_for(root_ns)

        def read(conn: Connection) -> Any:
            it = self._intent(conn, root_ns, intent)
            folder = conn.execute(
                select(nodes.c.path, nodes.c.name, nodes.c.pending).where(nodes.c.ns_id == root_ns, nodes.c.node_id == it.node_id)
            ).one()
            assert folder.pending == intent, "the frozen folder lost its freeze"
            return it, folder, read_subtree(conn, root_ns, str(folder.path), with_links=True)

        it, folder, tree = root_db.read(read)
        db = self.router.shard_db(str(it.shard))
        # References are added on s: touch their chunks on the chunk database first, so that
        # the collector never takes a chunk this copy is about to name
        # (`cubby.metadata.shardchunks`).
        touch_chunks(self.router.chunks, sorted({c[0] for fr in tree.revs.values() for c in json.loads(fr.blocklist)}))
        new_ns, owner_id, now = int(it.new_ns), int(it.user_id), time.time()

        def write(conn: Connection) -> None:
            if conn.execute(select(namespaces.c.ns_id).where(namespaces.c.ns_id == new_ns)).first() is not None:
                return  # copied before (this step commits whole)
            base = int(it.base)
            conn.execute(
                insert(namespaces).values(
                    ns_id=new_ns, kind="shared", owner_id=owner_id, head=base, next_node=1, created_at=now,
                    name=folder.name, settling=True,
                )
            )
            dst = NamespaceTxn(db, conn, new_ns, base, 1, owner_id, now=now)
            write_subtree(tree, dst, paths.ROOT, dst_parent=0, keep_ids=True)
            dst.finish()
            # The revisions the copies had in the root: a client's pre-share revision still
            # names the unchanged copy (`cubby.metadata.tree.same_as_before_share`).
            origins = [{"ns_id": new_ns, "node_id": int(n.node_id), "rev": int(n.rev)} for n in tree.nodes]
            for i in range(0, len(origins), BATCH):
                conn.execute(insert(share_origins), origins[i : i + BATCH])
            conn.execute(update(namespaces).where(namespaces.c.ns_id == new_ns).values(cut=dst.head))
            moved = [
                {**ln, "ns_id": new_ns, "node_id": 0 if int(ln["node_id"]) == tree.root_id else ln["node_id"]}
                for ln in tree.links
            ]
            if moved:
                conn.execute(insert(links), moved)
            conn.execute(
                insert(members),
                [
                    {"ns_id": new_ns, "user_id": owner_id, "role": "owner", "state": "active", "invited_by": None, "created_at": now},
                    {"ns_id": new_ns, "user_id": int(it.invitee_id), "role": it.role, "state": "invited",
                     "invited_by": owner_id, "created_at": now},
                ],
            )

        db.write(write)
        sync_memberships(self.router, new_ns, [owner_id, int(it.invitee_id)])
        # The links went with their targets: the directory's ``link_tokens`` names S now
        # (a link resolves to the copy, the same content, until the mount).
        point_links(self.router, [str(ln["link_id"]) for ln in tree.links], new_ns)

    def _mount(self, conn: Connection, root_ns: int, intent: str) -> tuple[int, str]:
        """Step 4 on r: the folder becomes a mount of S, if this process still owns the
        intent and it is ``frozen`` (recovery never mounts: it undoes). Answers the root's new head (the mount's
        journal id) and the folder's path now (a rename of it or above it may have moved it
        while it was frozen: it is known by its node id)."""
        db = self.router.db_for(root_ns)
        tx = open_txn(db, conn, root_ns, None)
        it = self._intent(conn, root_ns, intent)
        if it is None or it.state != "frozen" or it.owner != str(self.owner):
            raise Unavailable("the share was interrupted and undone; try again")
        tx.user_id = int(it.user_id)
        folder = conn.execute(select(nodes).where(nodes.c.ns_id == root_ns, nodes.c.node_id == it.node_id)).one()
        lo, hi = key_range(paths.key(folder.path))
        # Its links went to S with the copy (step 3): they leave the root, before the nodes
        # below the folder lose the keys that find them.
        below = select(nodes.c.node_id).where(nodes.c.ns_id == root_ns, nodes.c.path_key > lo, nodes.c.path_key < hi)
        conn.execute(
            delete(links).where(
                links.c.ns_id == root_ns, or_(links.c.node_id == folder.node_id, links.c.node_id.in_(below))
            )
        )
        conn.execute(
            update(nodes)
            .where(nodes.c.ns_id == root_ns, nodes.c.path_key > lo, nodes.c.path_key < hi)
            .ordered_values((nodes.c.deleted_key, nodes.c.path_key), (nodes.c.path_key, None), (nodes.c.deleted, True))
        )
        jid = tx.next_jid()
        conn.execute(
            update(nodes)
            .where(nodes.c.ns_id == root_ns, nodes.c.node_id == folder.node_id)
            .values(kind="mount", target_ns=int(it.new_ns), rev=jid, pending=None)
        )
        tx.journal("mount", node_id=folder.node_id, parent_id=folder.parent_id, kind="mount", path=folder.path, rev=jid)
        conn.execute(
            update(share_intents)
            .where(share_intents.c.ns_id == root_ns, share_intents.c.intent_id == intent)
            .values(state="mounted", lease_until=self.owner.lease_until())
        )
        tx.finish()
        return tx.head, str(folder.path)

    def _publish(self, root_ns: int, intent: str) -> tuple[int, int]:
        """Step 5 (idempotent): placement live, membership copy, the intent goes, and S is
        settled last, right before the share is acknowledged. Answers S's cut and head."""
        root_db = self.router.db_for(root_ns)
        it = root_db.read(lambda conn: self._intent(conn, root_ns, intent))
        new_ns = int(it.new_ns)
        publish_namespace(self.router, new_ns)
        sync_memberships(self.router, new_ns, [int(it.user_id), int(it.invitee_id)])
        self._step("published")
        root_db.write(
            lambda conn: conn.execute(
                delete(share_intents).where(share_intents.c.ns_id == root_ns, share_intents.c.intent_id == intent)
            )
        )
        self._step("released")
        return self._settle(self.router.shard_db(str(it.shard)), new_ns)

    @staticmethod
    def _settle(db: Database, ns_id: int) -> tuple[int, int]:
        """S is no longer ``settling`` (idempotent); answers its cut and head."""

        def run(conn: Connection) -> tuple[int, int]:
            conn.execute(update(namespaces).where(namespaces.c.ns_id == ns_id).values(settling=False))
            row = conn.execute(select(namespaces.c.cut, namespaces.c.head).where(namespaces.c.ns_id == ns_id)).one()
            return int(row.cut), int(row.head)

        return db.write(run)

    def _undo(self, root_ns: int, intent: str) -> None:
        """Undo an intent that never reached step 4 (see the module docstring)."""
        root_db = self.router.db_for(root_ns)

        def mark(conn: Connection) -> Any:
            lock_namespace(root_db, conn, root_ns)
            it = self._intent(conn, root_ns, intent)
            if it is None or it.state not in ("frozen", "undoing"):
                return None
            conn.execute(
                update(share_intents)
                .where(share_intents.c.ns_id == root_ns, share_intents.c.intent_id == intent)
                .values(state="undoing")
            )
            return it

        it = root_db.write(mark)
        if it is None:
            return
        new_ns = int(it.new_ns)
        db = self.router.shard_db(str(it.shard))
        self.router.directory.write(lambda c: drop_memberships(c, new_ns))
        copied = [str(r[0]) for r in db.read(lambda c: c.execute(select(links.c.link_id).where(links.c.ns_id == new_ns)).all())]
        point_links(self.router, copied, root_ns)  # back to the root before S's copy goes

        def drop_copy(conn: Connection) -> None:
            for table in NS_TABLES:
                conn.execute(delete(table).where(table.c.ns_id == new_ns))
            conn.execute(delete(namespaces).where(namespaces.c.ns_id == new_ns))

        db.write(drop_copy)
        forget_namespace(self.router, new_ns)

        def unfreeze(conn: Connection) -> None:
            lock_namespace(root_db, conn, root_ns)
            conn.execute(
                update(nodes)
                .where(nodes.c.ns_id == root_ns, nodes.c.node_id == it.node_id, nodes.c.pending == intent)
                .values(pending=None)
            )
            conn.execute(delete(share_intents).where(share_intents.c.ns_id == root_ns, share_intents.c.intent_id == intent))

        root_db.write(unfreeze)

    # ------------------------------------------------------------------------------------------
    def recover(self, around: Around | None = None) -> int:
        """Finish or undo every cross-shard share whose owner is gone, on every shard (see the
        module docstring). Returns how many were handled; safe to run at any time, from any
        process, more than once. ``around`` wraps each with the root and the new namespace,
        and the owner and the invitee (the metadata cache fences and invalidates their heads
        and memberships there)."""
        now = time.time()
        todo: list[tuple[int, str, str, int, list[int]]] = []
        for db in self.shard_dbs():
            rows = db.read(
                lambda c: c.execute(
                    select(
                        share_intents.c.ns_id, share_intents.c.intent_id, share_intents.c.state,
                        share_intents.c.owner, share_intents.c.lease_until, share_intents.c.new_ns,
                        share_intents.c.user_id, share_intents.c.invitee_id,
                    )
                ).all()
            )
            todo += [
                (int(ns), str(intent), str(state), int(new), [int(u), int(i)])
                for ns, intent, state, owner, lease, new, u, i in rows
                if self.owner.is_gone(owner, lease, now)
            ]
        failed: list[CubbyError] = []
        self._settle_orphans()
        for root_ns, intent, state, new_ns, people in todo:
            try:
                with around([root_ns, new_ns], people) if around else nullcontext():
                    if state == "mounted":
                        self._publish(root_ns, intent)
                    else:
                        self._undo(root_ns, intent)
            except CubbyError as exc:
                failed.append(exc)
        if failed:
            raise failed[0]
        return len(todo)


    def _settle_orphans(self) -> None:
        """Settle the namespaces still ``settling`` whose share has no intent any more (its
        process died between deleting the intent and settling, step 5's last two writes).
        The intents are read *after* the settling namespaces: an intent exists from before
        its namespace is created until step 5, so one not found then is gone for good."""
        settling: dict[int, Database] = {}
        for db in self.shard_dbs():
            for (ns,) in db.read(lambda c: c.execute(select(namespaces.c.ns_id).where(namespaces.c.settling.is_(True))).all()):
                settling[int(ns)] = db
        if not settling:
            return
        pending: set[int] = set()
        for db in self.shard_dbs():
            pending |= {
                int(r[0])
                for r in db.read(
                    lambda c: c.execute(select(share_intents.c.new_ns).where(share_intents.c.new_ns.in_(list(settling)))).all()
                )
            }
        for ns, db in settling.items():
            if ns not in pending:
                self._settle(db, ns)

    def shard_dbs(self) -> list[Database]:
        """Each shard's database once (two shard names may share one)."""
        return list({id(db): db for db in self.router.shards.values()}.values())


def point_links(router: ShardRouter, link_ids: list[str], ns_id: int) -> None:
    """The directory's ``link_tokens`` of ``link_ids`` name ``ns_id`` (idempotent)."""
    if not link_ids:
        return

    def run(conn: Connection) -> None:
        for i in range(0, len(link_ids), BATCH):
            conn.execute(update(link_tokens).where(link_tokens.c.link_id.in_(link_ids[i : i + BATCH])).values(ns_id=ns_id))

    router.directory.write(run)


def reserve_namespace(router: ShardRouter, shard: str) -> int:
    """A new namespace id on ``shard`` with its placement ``creating`` in the directory: the
    router routes it (the share's own steps write there), but nothing names it until the
    share mounts it, and `publish_namespace` makes it ``live``."""
    ns_id = allocate_ns_id(router, shard)
    router.directory.write(
        lambda c: c.execute(insert(placements).values(ns_id=ns_id, shard=shard, state="creating", epoch=1))
    )
    return ns_id


def publish_namespace(router: ShardRouter, ns_id: int) -> None:
    """The placement of a namespace a share made goes ``live`` (idempotent)."""
    router.directory.write(
        lambda c: c.execute(
            update(placements).where(placements.c.ns_id == ns_id, placements.c.state == "creating").values(state="live")
        )
    )
    router.forget(ns_id)


def forget_namespace(router: ShardRouter, ns_id: int) -> None:
    """Drop the placement of a namespace whose share was undone (idempotent)."""
    router.directory.write(lambda c: c.execute(delete(placements).where(placements.c.ns_id == ns_id)))
    router.forget(ns_id)


def sync_memberships(router: ShardRouter, ns_id: int, user_ids: Iterable[int]) -> None:
    """Copy the ``members`` rows of ``user_ids`` in ``ns_id`` from its shard (the truth) into
    the directory's ``memberships`` (what authentication reads); a row gone from the shard
    goes from the copy. Idempotent, and always after the shard's change: the copy never
    grants more than the truth."""
    users = sorted({int(u) for u in user_ids})
    rows = {
        int(r.user_id): r
        for r in router.db_for(ns_id).read(
            lambda c: c.execute(select(members).where(members.c.ns_id == ns_id, members.c.user_id.in_(users))).all()
        )
    }

    def run(conn: Connection) -> None:
        for uid in users:
            r = rows.get(uid)
            if r is None:
                drop_memberships(conn, ns_id, uid)
            else:
                write_membership(conn, uid, ns_id, str(r.role), str(r.state))

    router.directory.write(run)


__all__ = [
    "STEPS", "Around", "ShareSteps", "Shared", "forget_namespace", "publish_namespace", "reserve_namespace", "sync_memberships",
]
