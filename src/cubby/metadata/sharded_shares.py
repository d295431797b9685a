"""Shared folders on a sharded deployment: every operation as single-database steps.

On one database (`cubby.metadata.shares.Sharing`) each sharing operation is one transaction
over every namespace it touches. Across shards no transaction spans two databases, so each is
a sequence of steps, ordered so that permission is never wider than the truth between two of
them. The shared namespace's ``members`` row (on its shard) is the truth; the member's mount
node (on the member's root shard) says where it appears; the directory's ``memberships`` copy
is what authentication reads (a user reaches S when the copy says active *and* the mount
exists). So when access widens the truth is written first and the copy last; when it
narrows the copy goes first and the truth after it.

- **share** a folder: `cubby.metadata.share_steps` (an intent, a frozen folder, the copy, the
  mount, the directory), whether the new namespace lands on the root's shard or another.
  Inviting to a folder already shared: its ``members`` row on its shard, then the copy.
- **accept**: the ``members`` row becomes ``active`` on S's shard; then the mount in the
  member's root; then the copy. Before the copy the member reaches nothing new; accepting
  again after a crash completes it (an existing mount is answered).
- **remove / leave**: the copy goes (the member's requests stop reaching S); then the
  ``members`` row on S's shard; then the mount leaves the member's root. A crash between
  leaves a row or a mount that reaches nothing; removing or leaving again takes it away.
- **unshare**: the other members' copies go; on S's shard their rows go and S is sealed (no
  write lands in it any more); each member's mount goes; in the owner's root, the mount
  becomes a folder again holding S's contents (read from S's shard: sealed, so they cannot
  change meanwhile); the owner's copy goes; last, on S's shard, the owner's row goes and S is
  retired. Every step is idempotent and the owner's ``members`` row stays until the last, so
  running unshare again after a crash finishes it.

Each step is one transaction on one database, and every step a later step needs is committed
before it starts, so a crash (kill -9) between any two leaves the operation either not begun,
finished, or in a state that grants nothing new and that the same call completes
(`tests/shares/test_sharded_members.py` stops it after each step, `STEPS`).

Accept, remove, leave and unshare also carry an intent: a ``member_intents`` row on S's shard
(S, the member, the operation, who asked, for unshare the other members; owner and lease as in
`cubby.metadata.leases`), written in its own transaction after the read-only checks and before
the first step, deleted after the last. So nobody has to repeat a call a crash interrupted:
`ShardedSharing.recover_members` (run by `Sharing.recover` at server start, and before each of
these operations) takes the rows whose owner is gone on every shard and runs their steps
again, then deletes them; an interrupted unshare does not leave S sealed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any, TypeVar

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Row

from cubby.core import paths
from cubby.errors import BadRequest, CubbyError, NotFound
from cubby.metadata.engine import Database
from cubby.metadata.leases import Owner
from cubby.metadata.nstxn import lock_namespace, open_txn
from cubby.metadata.schema import (
    member_intents,
    members,
    memberships,
    namespaces,
    ns_chunks,
    share_origins,
    users,
)
from cubby.metadata.shards import ShardRouter, drop_memberships
from cubby.metadata.share_steps import Around, ShareSteps, sync_memberships
from cubby.metadata.shares import (
    SharingChange,
    member_of,
    mount_at_top,
    mount_of,
    mount_to_folder,
    require_owner,
    unmount,
    user_by_name,
)
from cubby.metadata.subtree import read_subtree
from cubby.metadata.tree import guard_mounts

STEPS = (
    "accept:truth", "accept:mount", "drop:copy", "drop:truth", "unshare:uncopied", "unshare:revoked",
    "unshare:unmounted", "unshare:restored",
)
"""Fault hook points of the membership operations, each after a step committed (the last step
of each is followed by the answer)."""

OPS = ("accept", "remove", "leave", "unshare")
"""The membership operations that carry a ``member_intents`` row."""

T = TypeVar("T")


class ShardedSharing:
    """The sharing operations of `Sharing` when namespaces are spread over shards."""

    def __init__(self, router: ShardRouter) -> None:
        self.router = router
        self.steps = ShareSteps(router)
        self.owner: Owner = self.steps.owner
        self.fault: Callable[[str], None] | None = None
        """Called with a step name after that step committed (`STEPS`): tests check what
        each user may reach between steps, and stop the operation there as a crash would."""

    def _step(self, name: str) -> None:
        if self.fault is not None:
            self.fault(name)

    def _user(self, name: Any) -> Row[Any]:
        return self.router.directory.read(lambda c: user_by_name(c, name))

    def _root_of(self, user_id: int) -> int:
        return int(self.router.directory.read(lambda c: c.execute(select(users.c.root_ns).where(users.c.id == user_id)).one()[0]))

    def _member(self, ns_id: int, user_id: int) -> Row[Any] | None:
        return self.router.db_for(ns_id).read(lambda c: member_of(c, ns_id, user_id))

    # ------------------------------------------------------------------------------------------
    def share(self, user_id: int, root_ns: int, path: str, invitee: Any, role: str) -> SharingChange:
        target = self._user(invitee)
        if int(target.id) == user_id:
            raise BadRequest("you cannot share a folder with yourself", code="share_with_self")
        root_db = self.router.db_for(root_ns)

        def probe(conn: Connection) -> Any:
            tx = open_txn(root_db, conn, root_ns, user_id)
            guard_mounts(tx, path)
            return tx.live(paths.key(path))

        row = root_db.read(probe)
        if row is None:
            raise NotFound(f"{path} does not exist")
        if row.kind == "file":
            raise BadRequest(f"{row.path} is a file; only folders can be shared", code="not_a_folder")
        everyone = frozenset({user_id, int(target.id)})
        if row.kind == "mount":
            ns_id = int(row.target_ns)
            state = self._invite(user_id, ns_id, int(target.id), role)
            cut = self.cut(ns_id)
            info = {
                "ns_id": ns_id, "path": str(row.path), "created": False, "user": target.name, "role": role,
                "state": state, "cut": cut, "mount_rev": int(row.rev),
            }
            return SharingChange(ns_id, info, {}, everyone)
        done = self.steps.share(user_id, root_ns, path, int(target.id), role, self.router.place_shared(root_ns))
        info = {
            "ns_id": done.ns_id, "path": done.path, "created": True, "user": target.name, "role": role,
            "state": "invited", "cut": done.cut, "mount_rev": done.root_head,
        }
        return SharingChange(done.ns_id, info, {root_ns: done.root_head, done.ns_id: done.ns_head}, everyone)

    def _invite(self, owner: int, ns_id: int, user_id: int, role: str) -> str:
        """Invite ``user_id`` to ``ns_id`` (or change their role): its shard, then the copy."""
        db = self.router.db_for(ns_id)

        def run(conn: Connection) -> str:
            lock_namespace(db, conn, ns_id)
            require_owner(conn, ns_id, owner)
            old = member_of(conn, ns_id, user_id)
            if old is None:
                conn.execute(
                    insert(members).values(
                        ns_id=ns_id, user_id=user_id, role=role, state="invited", invited_by=owner, created_at=time.time()
                    )
                )
                return "invited"
            if old.role == "owner":
                raise BadRequest("the owner's role cannot change", code="is_owner")
            conn.execute(update(members).where(members.c.ns_id == ns_id, members.c.user_id == user_id).values(role=role))
            return str(old.state)

        state = db.write(run)
        sync_memberships(self.router, ns_id, [user_id])
        return state

    # ------------------------------------------------------------------------------------------
    def accept(self, user_id: int, root_ns: int, ns_id: int) -> SharingChange:
        self.recover_members()
        self.router.db_for(ns_id)  # an unknown namespace: NotFound before any intent
        return self._carried(ns_id, user_id, "accept", user_id, lambda: self._accept(user_id, root_ns, ns_id))

    def _accept(self, user_id: int, root_ns: int, ns_id: int) -> SharingChange:
        """Accept's steps (idempotent): the truth on S's shard, the mount, the copy."""
        db = self.router.db_for(ns_id)

        def truth(conn: Connection) -> tuple[Row[Any], str]:
            lock_namespace(db, conn, ns_id)
            m = member_of(conn, ns_id, user_id)
            if m is None:
                raise NotFound(f"you have no invitation to shared folder {ns_id}", code="no_invitation")
            if m.state != "active":
                conn.execute(
                    update(members).where(members.c.ns_id == ns_id, members.c.user_id == user_id).values(state="active")
                )
            name = conn.execute(select(namespaces.c.name).where(namespaces.c.ns_id == ns_id)).one()[0]
            return m, str(name or f"Shared {ns_id}")

        m, name = db.write(truth)
        self._step("accept:truth")
        root_db = self.router.db_for(root_ns)

        def mount(conn: Connection) -> tuple[str, int | None]:
            tx = open_txn(root_db, conn, root_ns, user_id)
            have = mount_of(conn, root_ns, ns_id)
            if have is not None:
                return str(have.path), None
            candidate = mount_at_top(tx, ns_id, name)
            tx.finish()
            return candidate, tx.head

        where, head = root_db.write(mount)
        self._step("accept:mount")
        sync_memberships(self.router, ns_id, [user_id])
        heads = {root_ns: head} if head is not None else {}
        return SharingChange(ns_id, {"ns_id": ns_id, "path": where, "role": m.role}, heads, frozenset({user_id}))

    # ------------------------------------------------------------------------------------------
    def _drop(self, ns_id: int, member_id: int, owner: int | None) -> SharingChange:
        """Remove ``member_id`` from ``ns_id`` (``owner``: the owner asking, else the member
        leaving). Access narrows, so the directory's copy goes first (authentication reads
        it: it never grants more than the truth), then the truth on S's shard, then the mount."""
        db = self.router.db_for(ns_id)

        def check(conn: Connection) -> bool:
            if owner is not None:
                require_owner(conn, ns_id, owner)
            m = member_of(conn, ns_id, member_id)
            if m is not None and m.role == "owner":
                raise BadRequest("the owner cannot leave a shared folder: unshare it instead", code="is_owner")
            return m is not None

        was_member = db.read(check)
        op = "leave" if owner is None else "remove"
        return self._carried(
            ns_id, member_id, op, owner or member_id, lambda: self._drop_steps(ns_id, member_id, owner, was_member)
        )

    def _drop_steps(self, ns_id: int, member_id: int, owner: int | None, was_member: bool) -> SharingChange:
        """Remove's and leave's steps (idempotent): the copy, the truth on S's shard, the mount."""
        db = self.router.db_for(ns_id)
        self.router.directory.write(lambda c: drop_memberships(c, ns_id, member_id))
        self._step("drop:copy")

        def truth(conn: Connection) -> None:
            lock_namespace(db, conn, ns_id)
            conn.execute(
                delete(members).where(members.c.ns_id == ns_id, members.c.user_id == member_id, members.c.role != "owner")
            )

        db.write(truth)
        self._step("drop:truth")
        root = self._root_of(member_id)
        path, head = self._unmount_in(root, ns_id, owner or member_id)
        if not was_member and path is None:
            raise NotFound("that user is not a member of this shared folder", code="not_a_member")
        heads = {root: head} if head is not None else {}
        return SharingChange(ns_id, {"ns_id": ns_id, "path": path}, heads, frozenset({member_id}))

    def _unmount_in(self, root_ns: int, ns_id: int, actor: int) -> tuple[str | None, int | None]:
        """The mount of ``ns_id`` leaves ``root_ns`` (idempotent): (its path, the new head)."""
        db = self.router.db_for(root_ns)

        def run(conn: Connection) -> tuple[str | None, int | None]:
            tx = open_txn(db, conn, root_ns, actor)
            was = unmount(tx, ns_id)
            if was is None:
                return None, None
            tx.finish()
            return was, tx.head

        return db.write(run)

    def remove_member(self, user_id: int, ns_id: int, member: Any) -> SharingChange:
        self.recover_members()
        return self._drop(ns_id, int(self._user(member).id), user_id)

    def leave(self, user_id: int, ns_id: int) -> SharingChange:
        self.recover_members()
        return self._drop(ns_id, user_id, None)

    # ------------------------------------------------------------------------------------------
    def unshare(self, user_id: int, ns_id: int) -> SharingChange:
        """Access narrows for everyone: the other members' copies go first, then their rows
        (and S is sealed), then their mounts; the owner's mount becomes a folder with S's
        contents; then the owner's copy, and last the owner's row with S itself."""
        db = self.router.db_for(ns_id)

        def check(conn: Connection) -> list[int]:
            require_owner(conn, ns_id, user_id)
            return [
                int(r[0])
                for r in conn.execute(select(members.c.user_id).where(members.c.ns_id == ns_id, members.c.user_id != user_id))
            ]

        self.recover_members()
        # Members that left before a crash of an earlier unshare: their copies and mounts too
        # (the copies go first, so after that step only the earlier call's intent names them).
        earlier = self._intended_others(ns_id, user_id)
        others = sorted((set(db.read(check)) | self._copied_members(ns_id) | earlier) - {user_id})
        return self._carried(
            ns_id, user_id, "unshare", user_id, lambda: self._unshare_steps(user_id, ns_id, others), others
        )

    def _unshare_steps(self, user_id: int, ns_id: int, others: list[int]) -> SharingChange:
        """Unshare's steps (idempotent) for the owner ``user_id`` and the members ``others``."""
        db = self.router.db_for(ns_id)
        self._drop_copies(ns_id, others)
        self._step("unshare:uncopied")

        def revoke(conn: Connection) -> None:
            # S's row locked without `lock_namespace`, which refuses a sealed namespace: a
            # second unshare after a crash finds S sealed already.
            conn.execute(select(namespaces.c.ns_id).where(namespaces.c.ns_id == ns_id).with_for_update())
            conn.execute(delete(members).where(members.c.ns_id == ns_id, members.c.user_id != user_id))
            conn.execute(update(namespaces).where(namespaces.c.ns_id == ns_id).values(sealed=True))

        db.write(revoke)
        self._step("unshare:revoked")
        heads: dict[int, int] = {}
        for uid in others:
            root = self._root_of(uid)
            _, head = self._unmount_in(root, ns_id, user_id)
            if head is not None:
                heads[root] = head
        self._step("unshare:unmounted")
        owner_root = self._root_of(user_id)
        tree = db.read(lambda conn: read_subtree(conn, ns_id, paths.ROOT))
        root_db = self.router.db_for(owner_root)

        def restore(conn: Connection) -> tuple[str | None, int | None]:
            tx = open_txn(root_db, conn, owner_root, user_id)
            path = mount_to_folder(tx, ns_id, tree)
            if path is None:
                return None, None
            tx.finish()
            return path, tx.head

        path, head = root_db.write(restore)
        self._step("unshare:restored")
        if head is not None:
            heads[owner_root] = head
        self.router.directory.write(lambda c: drop_memberships(c, ns_id))

        def retire(conn: Connection) -> None:
            conn.execute(select(namespaces.c.ns_id).where(namespaces.c.ns_id == ns_id).with_for_update())
            conn.execute(delete(members).where(members.c.ns_id == ns_id))
            conn.execute(delete(ns_chunks).where(ns_chunks.c.ns_id == ns_id))
            conn.execute(delete(share_origins).where(share_origins.c.ns_id == ns_id))
            conn.execute(update(namespaces).where(namespaces.c.ns_id == ns_id).values(kind="retired"))

        db.write(retire)
        return SharingChange(ns_id, {"ns_id": ns_id, "path": path}, heads, frozenset({user_id, *others}))

    # ------------------------------------------------------------------------------------------
    def _carried(
        self, ns_id: int, user_id: int, op: str, actor: int, steps: Callable[[], T], others: Iterable[int] = ()
    ) -> T:
        """Run ``steps`` with a ``member_intents`` row on S's shard, written (its own
        transaction) before the first step and deleted after the last: a process that dies
        between leaves the row, and `recover_members` runs the steps again. A refusal
        (`NotFound`, `BadRequest`) means there is nothing left to do: the row goes too. Any
        other failure leaves it for recovery (once this process is gone or its lease ran out)."""
        key = (member_intents.c.ns_id == ns_id, member_intents.c.user_id == user_id, member_intents.c.op == op)
        values = {
            "actor": actor, "others": ",".join(str(u) for u in sorted(set(others))) or None,
            "created_at": time.time(), "owner": str(self.owner), "lease_until": self.owner.lease_until(),
        }

        db = self.router.db_for(ns_id)

        def begin(conn: Connection) -> None:
            # Insert-or-skip, then claim: two identical calls at once both end up here (the
            # second waits for the first's row) instead of one failing on the primary key; a
            # retry of the same operation takes the row over. The steps are idempotent.
            db.insert_ignore(conn, member_intents, [{"ns_id": ns_id, "user_id": user_id, "op": op, **values}])
            conn.execute(update(member_intents).where(*key).values(**values))

        db.write(begin)
        try:
            done = steps()
        except (NotFound, BadRequest):
            db.write(lambda conn: conn.execute(delete(member_intents).where(*key)))
            raise
        db.write(lambda conn: conn.execute(delete(member_intents).where(*key)))
        return done

    def recover_members(self, around: Around | None = None) -> int:
        """Finish every accept, remove, leave and unshare whose process is gone
        (`cubby.metadata.leases`), on every shard, by running its steps again (each is
        idempotent), then delete its intent. Returns how many were handled; safe to run at
        any time, from any process, more than once. ``around`` wraps each with S and the roots
        of the member, the actor and (unshare) the other members, and those users: the
        metadata cache fences and invalidates their heads and memberships there."""
        now = time.time()
        todo: list[tuple[Database, Any]] = []
        for db in self.steps.shard_dbs():
            rows = db.read(lambda c: c.execute(select(member_intents)).all())
            todo += [(db, r) for r in rows if self.owner.is_gone(r.owner, r.lease_until, now)]
        failed: list[CubbyError] = []
        for db, it in todo:
            try:
                self._recover_one(db, it, around)
            except CubbyError as exc:
                failed.append(exc)
        if failed:
            raise failed[0]
        return len(todo)

    def _recover_one(self, found: Database, it: Any, around: Around | None) -> None:
        """Run intent ``it``'s steps again, then delete it from ``found``, the shard it was
        read from (S's shard, unless S has moved to another shard since)."""
        ns_id, user_id, op, actor = int(it.ns_id), int(it.user_id), str(it.op), int(it.actor)
        others = self._intended_others(ns_id, user_id) if op == "unshare" else set()
        roots = self.roots_around(ns_id, {user_id, actor, *others})
        key = (member_intents.c.ns_id == ns_id, member_intents.c.user_id == user_id, member_intents.c.op == op)
        db = self.router.db_for(ns_id)
        with around([ns_id, *roots.values()], sorted(roots)) if around else nullcontext():
            try:
                if op == "accept":
                    self._accept(user_id, self._root_of(user_id), ns_id)
                elif op in ("remove", "leave"):
                    self._drop_steps(ns_id, user_id, actor if op == "remove" else None, True)
                elif op == "unshare":
                    current = set(db.read(lambda c: [int(r[0]) for r in c.execute(
                        select(members.c.user_id).where(members.c.ns_id == ns_id)
                    )]))
                    others |= current | self._copied_members(ns_id)
                    self._unshare_steps(user_id, ns_id, sorted(others - {user_id}))
            except (NotFound, BadRequest):
                pass  # nothing left to do (an invitation withdrawn meanwhile, say)
            found.write(lambda conn: conn.execute(delete(member_intents).where(*key)))

    def _drop_copies(self, ns_id: int, user_ids: list[int]) -> None:
        def run(conn: Connection) -> None:
            for uid in user_ids:
                drop_memberships(conn, ns_id, uid)

        self.router.directory.write(run)

    def _intended_others(self, ns_id: int, user_id: int) -> set[int]:
        """The other members an earlier, interrupted unshare of ``ns_id`` by ``user_id`` named."""
        key = (member_intents.c.ns_id == ns_id, member_intents.c.user_id == user_id, member_intents.c.op == "unshare")
        text = self.router.db_for(ns_id).read(lambda c: c.execute(select(member_intents.c.others).where(*key)).scalar())
        return {int(u) for u in str(text or "").split(",") if u}

    def _copied_members(self, ns_id: int) -> set[int]:
        return {
            int(r[0])
            for r in self.router.directory.read(
                lambda c: c.execute(select(memberships.c.user_id).where(memberships.c.ns_id == ns_id)).all()
            )
        }

    def roots_around(self, ns_id: int, users_: Iterable[int]) -> dict[int, int]:
        """`Sharing.roots_around` across shards: the members from ``ns_id``'s shard (none if
        ``ns_id`` is a root, or unknown), their roots from the directory."""
        ids = {int(u) for u in users_}
        try:
            db = self.router.db_for(ns_id)
        except CubbyError:
            db = None
        if db is not None:
            ids |= {
                int(r[0])
                for r in db.read(lambda c: c.execute(select(members.c.user_id).where(members.c.ns_id == ns_id)).all())
            }
        if not ids:
            return {}
        rows = self.router.directory.read(
            lambda c: c.execute(select(users.c.id, users.c.root_ns).where(users.c.id.in_(sorted(ids)))).all()
        )
        return {int(r.id): int(r.root_ns) for r in rows if r.root_ns is not None}

    def cut(self, ns_id: int) -> int | None:
        """The last journal id the share copied into ``ns_id`` (None if not made by a share)."""
        row = self.router.db_for(ns_id).read(
            lambda c: c.execute(select(namespaces.c.cut).where(namespaces.c.ns_id == ns_id)).first()
        )
        return None if row is None or row[0] is None else int(row[0])

    # ------------------------------------------------------------------------------------------
    def list_shares(self, user_id: int) -> list[dict[str, Any]]:
        """The user's shared folders and invitations, from the directory's copy, each with
        its members (names from the directory, the mount from the user's root shard)."""

        def mine(conn: Connection) -> tuple[int, list[Any], dict[int, str]]:
            root = int(conn.execute(select(users.c.root_ns).where(users.c.id == user_id)).one()[0])
            rows = conn.execute(
                select(memberships).where(memberships.c.user_id == user_id).order_by(memberships.c.ns_id)
            ).all()
            return root, list(rows), {}

        root, rows, _ = self.router.directory.read(mine)
        return [self._share_info(root, m) for m in rows]

    def _share_info(self, root: int, m: Any) -> dict[str, Any]:
        ns = int(m.ns_id)

        def on_shard(c: Connection) -> tuple[list[Any], Any]:
            everyone = list(c.execute(select(members).where(members.c.ns_id == ns)).all())
            return everyone, c.execute(select(namespaces.c.name).where(namespaces.c.ns_id == ns)).one()[0]

        everyone, name = self.router.db_for(ns).read(on_shard)
        ids = [int(e.user_id) for e in everyone]

        def names_of(c: Connection) -> dict[int, str]:
            return {int(r.id): str(r.name) for r in c.execute(select(users.c.id, users.c.name).where(users.c.id.in_(ids)))}

        names = self.router.directory.read(names_of)
        mount = self.router.db_for(root).read(lambda c: mount_of(c, root, ns)) if m.state == "active" else None
        people = sorted(
            ({"user": names.get(int(e.user_id), "?"), "role": e.role, "state": e.state} for e in everyone),
            key=lambda p: str(p["user"]).lower(),
        )
        return {
            "ns_id": ns, "name": name, "role": m.role, "state": m.state,
            "path": mount.path if mount is not None else None, "members": people,
        }


__all__ = ["OPS", "STEPS", "ShardedSharing"]
