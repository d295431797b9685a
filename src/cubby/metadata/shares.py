"""Shared folders: turning a folder into a namespace of its own, members, mounts.

A shared folder is a namespace. Each active member has a node of kind "mount" in their root
namespace (``nodes.target_ns``) where the folder appears in their tree; the ``members`` row
(keyed by the shared namespace) is the truth about who may reach it and with which role.

On one database, sharing is one transaction holding the lock of the owner's root namespace, the
lock every writer of that namespace takes first. It copies the folder's live nodes with their
current revisions only (no history: a delete acknowledged before the share can never be seen by
a member, neither as a file nor in history), copies the chunk references those revisions need
(no chunk moves, and members need no proof of possession for them), marks the source nodes gone
and turns the folder node into a mount. A write that resolved its path before the share and
commits after it finds a mount above its path and is refused with the retryable
`NamespaceMoved` (see `cubby.metadata.tree.guard_mounts`), so it lands exactly once or not at
all.

On one database the new namespace is created in the owner's root's database and the copy is
one local transaction; accepting, removing a member and unsharing lock every namespace row
involved in ascending id order (no deadlocks, `cubby.metadata.nstxn.lock_namespaces`) and run
as one transaction.

On a sharded deployment no transaction spans two databases: `Sharing` hands every operation
to `cubby.metadata.sharded_shares.ShardedSharing`, where each is a sequence of
single-database steps (the share with an intent and recovery: `cubby.metadata.share_steps`).
The helpers below (`user_by_name`, `member_of`, `require_owner`, `mount_of`, `unmount`) are
shared by both: each reads or writes one database. `cut` and `list_shares` only read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Row

from cubby.core import paths
from cubby.errors import BadRequest, Forbidden, NotFound
from cubby.metadata.engine import Database
from cubby.metadata.nstxn import NamespaceTxn, finish_all, key_range, lock_namespaces, open_txn
from cubby.metadata.schema import link_tokens, links, members, namespaces, nodes, ns_chunks, users
from cubby.metadata.shards import ShardRouter, allocate_ns_id, drop_memberships, write_membership
from cubby.metadata.subtree import Subtree, read_subtree, write_subtree
from cubby.metadata.tree import folder_to_share

if TYPE_CHECKING:
    from cubby.metadata.sharded_shares import ShardedSharing
    from cubby.metadata.share_steps import Around

ROLES = ("editor", "viewer")
"""Roles an owner can give; "owner" belongs to whoever shared the folder."""
_BATCH = 1000


@dataclass(frozen=True)
class SharingChange:
    """What a sharing operation changed, so that the server can tell listeners.

    ``heads``: namespace -> its new journal head, for every namespace that was written.
    ``users``: everyone whose set of reachable namespaces (or invitations) changed.
    """

    ns_id: int
    info: dict[str, Any]
    heads: dict[int, int] = field(default_factory=dict)
    users: frozenset[int] = frozenset()


def user_by_name(conn: Connection, name: Any) -> Row[Any]:
    """The ``users`` row named ``name`` (a directory read); `NotFound` if there is none."""
    if not isinstance(name, str) or not name:
        raise BadRequest("give the name of the user to share with", field="user")
    row = conn.execute(select(users).where(users.c.name_key == name.lower())).first()
    if row is None:
        raise NotFound(f"no user named {name!r}", code="unknown_user")
    return row


def member_of(conn: Connection, ns_id: int, user_id: int) -> Row[Any] | None:
    """The ``members`` row of ``user_id`` in ``ns_id`` (on ``ns_id``'s shard), or None."""
    return conn.execute(select(members).where(members.c.ns_id == ns_id, members.c.user_id == user_id)).first()


def require_owner(conn: Connection, ns_id: int, user_id: int) -> None:
    """`NotFound` unless ``user_id`` is an active member of ``ns_id``, `Forbidden` unless its owner."""
    m = member_of(conn, ns_id, user_id)
    if m is None or m.state != "active":
        raise NotFound("no such shared folder")
    if m.role != "owner":
        raise Forbidden("only the owner of a shared folder can do this", code="not_owner")


def mount_of(conn: Connection, root_ns: int, ns_id: int) -> Row[Any] | None:
    """The live mount node of ``ns_id`` in ``root_ns`` (on the root's shard), or None."""
    return conn.execute(
        select(nodes).where(nodes.c.ns_id == root_ns, nodes.c.target_ns == ns_id, nodes.c.path_key.is_not(None))
    ).first()


def unmount(tx: NamespaceTxn, ns_id: int) -> str | None:
    """Remove the mount of ``ns_id`` from ``tx``'s (root) namespace and journal it; answers
    the mount's path, or None if there was none (idempotent)."""
    row = mount_of(tx.conn, tx.ns_id, ns_id)
    if row is None:
        return None
    jid = tx.next_jid()
    tx.conn.execute(
        update(nodes)
        .where(nodes.c.ns_id == tx.ns_id, nodes.c.node_id == row.node_id)
        .values(deleted=True, path_key=None, deleted_key=None, rev=jid)
    )
    tx.journal("unmount", node_id=row.node_id, parent_id=row.parent_id, kind="mount", path=row.path, rev=jid)
    tx.forget()
    return str(row.path)


def mount_to_folder(tx: NamespaceTxn, ns_id: int, contents: Subtree) -> str | None:
    """Turn the owner's mount of ``ns_id`` in ``tx``'s (root) namespace back into a folder that
    holds ``contents`` (the shared folder's tree, metadata only, with new node ids), journalled
    as an unmount then a mkdir and the writes below it; answers the folder's path, or None when
    there is no mount (idempotent). Unsharing on one database and across shards both end here."""
    mount = mount_of(tx.conn, tx.ns_id, ns_id)
    if mount is None:
        return None
    path = str(mount.path)
    jid = tx.next_jid()
    tx.journal("unmount", node_id=mount.node_id, parent_id=mount.parent_id, kind="mount", path=path, rev=jid)
    jid = tx.next_jid()
    tx.conn.execute(
        update(nodes)
        .where(nodes.c.ns_id == tx.ns_id, nodes.c.node_id == mount.node_id)
        .values(kind="folder", target_ns=None, rev=jid)
    )
    tx.journal("mkdir", node_id=mount.node_id, parent_id=mount.parent_id, kind="folder", path=path, rev=jid)
    tx.flush()
    write_subtree(contents, tx, path, dst_parent=int(mount.node_id), keep_ids=False)
    tx.forget()
    return path


def mount_at_top(tx: NamespaceTxn, ns_id: int, name: str) -> str:
    """Mount ``ns_id`` at the top of ``tx``'s (root) namespace as ``/name``, or ``/name (1)``,
    ``/name (2)``… if that is taken, and journal it; answers the mount's path. Names are cut
    to fit: a 255-byte folder name with " (1)" would be a mount that the member could neither
    stat, rename nor leave."""
    candidate, i = paths.join(paths.ROOT, paths.fit_name(name)), 0
    while tx.live(paths.key(candidate)) is not None:
        i += 1
        candidate = paths.join(paths.ROOT, paths.fit_name(name, f" ({i})"))
    node_id, jid = tx.new_node_id(), tx.next_jid()
    tx.put_node(
        node_id,
        {
            "parent_id": 0, "name": paths.split(candidate)[1], "path": candidate, "path_key": paths.key(candidate),
            "kind": "mount", "rev": jid, "content_rev": None, "size": 0, "content_hash": None, "mtime": None,
            "deleted": False, "deleted_key": None, "target_ns": ns_id, "pending": None,
        },
        new=True,
    )
    tx.journal("mount", node_id=node_id, parent_id=0, kind="mount", path=candidate, rev=jid)
    return candidate


class Sharing:
    """The sharing operations on one metadata database (reached as ``store.sharing``)."""

    def __init__(self, db: Database, router: ShardRouter | None = None) -> None:
        self.db = db
        self.router = router or ShardRouter(db)
        self.sharded: ShardedSharing | None = None
        """On a sharded deployment, the same operations as single-database steps
        (`cubby.metadata.sharded_shares`); None on one database."""
        if not self.router.single:
            from cubby.metadata.sharded_shares import ShardedSharing

            self.sharded = ShardedSharing(self.router)

    def _copy_membership(self, user_id: int, ns_id: int, role: str | None, state: str = "active") -> None:
        """Mirror a ``members`` change into the directory's copy (`cubby.metadata.shards`); on
        a single database, in the same transaction. (Across shards the intents of
        docs/SHARDING.md order the two writes.) ``role`` None deletes the row."""
        if role is None:
            self.router.directory.write(lambda c: drop_memberships(c, ns_id, user_id))
        else:
            self.router.directory.write(lambda c: write_membership(c, user_id, ns_id, role, state))

    # ------------------------------------------------------------------------------------------
    # operations
    # ------------------------------------------------------------------------------------------
    def share(self, user_id: int, root_ns: int, path: str, invitee: Any, role: Any = "editor") -> SharingChange:
        """Share the folder at ``path`` of the user's root namespace with ``invitee`` (a user
        name). The first share turns the folder into a shared namespace; sharing a folder that
        is already shared (its mount) invites another member or changes their role. Only the
        owner may invite: an editor who could invite could hand the folder to anyone, which is
        the owner's decision."""
        path = paths.normalize(path)
        if role not in ROLES:
            raise BadRequest(f"role must be one of {', '.join(ROLES)}", field="role")
        if path == paths.ROOT:
            raise BadRequest("share a folder, not your whole tree", code="not_a_folder")
        if self.sharded is not None:
            return self.sharded.share(user_id, root_ns, path, invitee, role)

        def run(conn: Connection) -> SharingChange:
            target = user_by_name(conn, invitee)
            if int(target.id) == user_id:
                raise BadRequest("you cannot share a folder with yourself", code="share_with_self")
            tx = open_txn(self.db, conn, root_ns, user_id)
            row = folder_to_share(tx, path)
            created = row.kind != "mount"
            if created:
                ns_id = self._convert(tx, row)
            else:
                ns_id = int(row.target_ns)
                require_owner(conn, ns_id, user_id)
            old = member_of(conn, ns_id, int(target.id))
            if old is None:
                conn.execute(
                    insert(members).values(
                        ns_id=ns_id, user_id=int(target.id), role=role, state="invited", invited_by=user_id,
                        created_at=tx.now,
                    )
                )
                state = "invited"
                self._copy_membership(int(target.id), ns_id, role, state)
            else:
                if old.role == "owner":
                    raise BadRequest("the owner's role cannot change", code="is_owner")
                conn.execute(
                    update(members)
                    .where(members.c.ns_id == ns_id, members.c.user_id == int(target.id))
                    .values(role=role)
                )
                state = str(old.state)
                self._copy_membership(int(target.id), ns_id, role, state)
            tx.finish()
            heads = {root_ns: tx.head}
            cut = conn.execute(select(namespaces.c.head, namespaces.c.cut).where(namespaces.c.ns_id == ns_id)).one()
            if created:
                heads[ns_id] = int(cut.head)
            info = {
                "ns_id": ns_id, "path": str(row.path), "created": created, "user": target.name, "role": role,
                "state": state, "cut": cut.cut, "mount_rev": int(row.rev) if not created else tx.head,
            }
            return SharingChange(ns_id, info, heads, frozenset({user_id, int(target.id)}))

        return self.db.write(run)

    def _convert(self, tx: NamespaceTxn, folder: Any) -> int:
        """Turn ``folder`` of the locked root namespace into a new shared namespace (see the
        module docstring). Returns its id."""
        conn = tx.conn
        # The new journal starts above every revision the owner's root has handed out, so that
        # a revision a client read before the share never names another version in the shared
        # folder: it matches only the unchanged copy (`cubby.metadata.tree.same_as_before_share`) or nothing.
        base = tx.head
        shard = self.router.placement(tx.ns_id).shard  # a shared folder starts beside its owner's root
        new_ns = allocate_ns_id(self.router, shard)
        conn.execute(
            insert(namespaces).values(
                ns_id=new_ns, kind="shared", owner_id=tx.user_id, head=base, next_node=1, created_at=tx.now,
                name=folder.name,
            )
        )
        self.router.place(new_ns, shard)
        dst = NamespaceTxn(self.db, conn, new_ns, base, 1, tx.user_id, now=tx.now)
        write_subtree(read_subtree(conn, tx.ns_id, folder.path), dst, paths.ROOT, dst_parent=0, keep_ids=True)
        dst.finish()
        conn.execute(update(namespaces).where(namespaces.c.ns_id == new_ns).values(cut=dst.head))
        # Links follow their targets into the new namespace (node ids were kept); a link to the
        # folder itself now points at the shared namespace's root.
        conn.execute(
            update(links)
            .where(
                links.c.ns_id == tx.ns_id,
                links.c.node_id.in_(select(nodes.c.node_id).where(nodes.c.ns_id == new_ns)),
            )
            .values(ns_id=new_ns)
        )
        conn.execute(
            update(links)
            .where(links.c.ns_id == tx.ns_id, links.c.node_id == folder.node_id)
            .values(ns_id=new_ns, node_id=0)
        )
        moved = [str(r[0]) for r in conn.execute(select(links.c.link_id).where(links.c.ns_id == new_ns))]
        if moved:  # the directory's copy follows (on one database, in this transaction)
            self.router.directory.write(
                lambda c: c.execute(update(link_tokens).where(link_tokens.c.link_id.in_(moved)).values(ns_id=new_ns))
            )
        lo, hi = key_range(paths.key(folder.path))
        # The source nodes are gone from the owner's root (their history stays there).
        conn.execute(
            update(nodes)
            .where(nodes.c.ns_id == tx.ns_id, nodes.c.path_key > lo, nodes.c.path_key < hi)
            .ordered_values((nodes.c.deleted_key, nodes.c.path_key), (nodes.c.path_key, None), (nodes.c.deleted, True))
        )
        jid = tx.next_jid()
        conn.execute(
            update(nodes)
            .where(nodes.c.ns_id == tx.ns_id, nodes.c.node_id == folder.node_id)
            .values(kind="mount", target_ns=new_ns, rev=jid)
        )
        tx.journal("mount", node_id=folder.node_id, parent_id=folder.parent_id, kind="mount", path=folder.path, rev=jid)
        tx.forget()
        conn.execute(
            insert(members).values(
                ns_id=new_ns, user_id=tx.user_id, role="owner", state="active", invited_by=None, created_at=tx.now
            )
        )
        self._copy_membership(int(tx.user_id or 0), new_ns, "owner")
        return new_ns

    def accept(self, user_id: int, root_ns: int, ns_id: int) -> SharingChange:
        """Accept an invitation: mount the shared folder in the user's root under its name, or
        ``name (1)``, ``name (2)``… if that is taken. Accepting again answers the same mount."""
        if self.sharded is not None:
            return self.sharded.accept(user_id, root_ns, ns_id)

        def run(conn: Connection) -> SharingChange:
            m = member_of(conn, ns_id, user_id)
            if m is None:
                raise NotFound(f"you have no invitation to shared folder {ns_id}", code="no_invitation")
            txs = lock_namespaces(self.db, conn, (root_ns, ns_id), user_id)
            tx = txs[root_ns]
            if m.state == "active":
                mount = mount_of(conn, root_ns, ns_id)
                return SharingChange(ns_id, {"ns_id": ns_id, "path": mount.path if mount else None, "role": m.role})
            name = conn.execute(select(namespaces.c.name).where(namespaces.c.ns_id == ns_id)).one()[0] or f"Shared {ns_id}"
            candidate = mount_at_top(tx, ns_id, name)
            conn.execute(
                update(members).where(members.c.ns_id == ns_id, members.c.user_id == user_id).values(state="active")
            )
            self._copy_membership(user_id, ns_id, str(m.role))
            heads = finish_all(txs)
            return SharingChange(
                ns_id, {"ns_id": ns_id, "path": candidate, "role": m.role}, {root_ns: heads[root_ns]}, frozenset({user_id})
            )

        return self.db.write(run)

    def _drop(self, conn: Connection, ns_id: int, member_id: int, actor: int) -> SharingChange:
        m = member_of(conn, ns_id, member_id)
        if m is None:
            raise NotFound("that user is not a member of this shared folder", code="not_a_member")
        if m.role == "owner":
            raise BadRequest("the owner cannot leave a shared folder: unshare it instead", code="is_owner")
        root = conn.execute(select(users.c.root_ns).where(users.c.id == member_id)).one()[0]
        txs = lock_namespaces(self.db, conn, (int(root), ns_id), actor)
        was = unmount(txs[int(root)], ns_id)
        conn.execute(delete(members).where(members.c.ns_id == ns_id, members.c.user_id == member_id))
        self._copy_membership(member_id, ns_id, None)
        heads = finish_all(txs)
        return SharingChange(ns_id, {"ns_id": ns_id, "path": was}, {int(root): heads[int(root)]}, frozenset({member_id}))

    def remove_member(self, user_id: int, ns_id: int, member: Any) -> SharingChange:
        """The owner removes a member (or withdraws an invitation): their mount goes at once."""
        if self.sharded is not None:
            return self.sharded.remove_member(user_id, ns_id, member)

        def run(conn: Connection) -> SharingChange:
            require_owner(conn, ns_id, user_id)
            target = user_by_name(conn, member)
            return self._drop(conn, ns_id, int(target.id), user_id)

        return self.db.write(run)

    def leave(self, user_id: int, ns_id: int) -> SharingChange:
        """A member leaves: the mount leaves their tree; the folder stays with the others."""
        if self.sharded is not None:
            return self.sharded.leave(user_id, ns_id)
        return self.db.write(lambda conn: self._drop(conn, ns_id, user_id, user_id))

    def unshare(self, user_id: int, ns_id: int) -> SharingChange:
        """The owner stops sharing: every member's mount goes, and the owner's mount becomes a
        folder again holding the shared folder's current contents (metadata only). The shared
        namespace is retired and its chunk references dropped, so collection can reclaim what
        only it used."""
        if self.sharded is not None:
            return self.sharded.unshare(user_id, ns_id)

        def run(conn: Connection) -> SharingChange:
            require_owner(conn, ns_id, user_id)
            rows = conn.execute(
                select(members.c.user_id, members.c.role, users.c.root_ns)
                .join(users, users.c.id == members.c.user_id)
                .where(members.c.ns_id == ns_id)
            ).all()
            roots = {int(r.user_id): int(r.root_ns) for r in rows}
            txs = lock_namespaces(self.db, conn, [*roots.values(), ns_id], user_id)
            for uid, root in roots.items():
                if uid != user_id:
                    unmount(txs[root], ns_id)
            path = mount_to_folder(txs[roots[user_id]], ns_id, read_subtree(conn, ns_id, paths.ROOT))
            conn.execute(delete(members).where(members.c.ns_id == ns_id))
            self.router.directory.write(lambda c: drop_memberships(c, ns_id))
            conn.execute(delete(ns_chunks).where(ns_chunks.c.ns_id == ns_id))
            conn.execute(update(namespaces).where(namespaces.c.ns_id == ns_id).values(kind="retired"))
            heads = finish_all(txs)
            heads = {ns: h for ns, h in heads.items() if ns != ns_id}
            return SharingChange(ns_id, {"ns_id": ns_id, "path": path}, heads, frozenset(roots))

        return self.db.write(run)

    def recover(self, around: Around | None = None) -> int:
        """Finish or undo the shares across shards whose process is gone
        (`cubby.metadata.share_steps.ShareSteps.recover`), and finish the accepts, removals,
        leaves and unshares whose process is gone
        (`cubby.metadata.sharded_shares.ShardedSharing.recover_members`); on one database each
        is one transaction and there is nothing to recover. Returns how many were handled."""
        if self.sharded is None:
            return 0
        try:
            shares = self.sharded.steps.recover(around)
        finally:  # the membership operations are recovered even if a share could not be
            members_ = self.sharded.recover_members(around)
        return shares + members_

    def roots_around(self, ns_id: int, users_: Iterable[int]) -> dict[int, int]:
        """User id -> root namespace of every member (invited or active) of ``ns_id`` and of
        ``users_``: whom a sharing change of ``ns_id`` may change, read before it so that a
        metadata cache can fence their keys (`cubby.cache.store`)."""
        if self.sharded is not None:
            return self.sharded.roots_around(ns_id, users_)

        def run(conn: Connection) -> dict[int, int]:
            ids = {int(u) for u in users_}
            q = select(users.c.id, users.c.root_ns).where(
                users.c.id.in_(select(members.c.user_id).where(members.c.ns_id == ns_id)) | users.c.id.in_(sorted(ids))
            )
            return {int(r.id): int(r.root_ns) for r in conn.execute(q) if r.root_ns is not None}

        return self.db.read(run)

    # ------------------------------------------------------------------------------------------
    # requests that raced the share
    # ------------------------------------------------------------------------------------------
    def cut(self, ns_id: int) -> int | None:
        """The last journal id the share copied into shared namespace ``ns_id`` (None for a
        namespace that was not made by sharing a folder)."""
        if self.sharded is not None:
            return self.sharded.cut(ns_id)
        row = self.db.read(lambda c: c.execute(select(namespaces.c.cut).where(namespaces.c.ns_id == ns_id)).first())
        return None if row is None or row[0] is None else int(row[0])

    def list_shares(self, user_id: int) -> list[dict[str, Any]]:
        """The user's shared folders and invitations, each with its members."""
        if self.sharded is not None:
            return self.sharded.list_shares(user_id)

        def run(conn: Connection) -> list[dict[str, Any]]:
            root = int(conn.execute(select(users.c.root_ns).where(users.c.id == user_id)).one()[0])
            mine = conn.execute(select(members).where(members.c.user_id == user_id).order_by(members.c.ns_id)).all()
            out = []
            for m in mine:
                ns = int(m.ns_id)
                everyone = conn.execute(
                    select(users.c.name, members.c.role, members.c.state)
                    .join(users, users.c.id == members.c.user_id)
                    .where(members.c.ns_id == ns)
                    .order_by(users.c.name_key)
                ).all()
                name = conn.execute(select(namespaces.c.name).where(namespaces.c.ns_id == ns)).one()[0]
                mount = mount_of(conn, root, ns) if m.state == "active" else None
                out.append(
                    {
                        "ns_id": ns, "name": name, "role": m.role, "state": m.state,
                        "path": mount.path if mount is not None else None,
                        "members": [{"user": e.name, "role": e.role, "state": e.state} for e in everyone],
                    }
                )
            return out

        return self.db.read(run)


__all__ = [
    "ROLES", "Sharing", "SharingChange", "member_of", "mount_at_top", "mount_of", "mount_to_folder", "require_owner", "unmount",
    "user_by_name",
]
