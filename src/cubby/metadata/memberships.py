"""Who reaches which namespace: a user's roles and mounts, read afresh for every request.

A shared namespace counts for a user only while the ``members`` row is active *and* its mount
node is live in the user's root namespace: the membership row is the truth about access, the
mount node about where it appears.

What crosses namespaces: both reads do. `memberships` reads the user's ``members`` rows (keyed
by the shared namespaces) and the mount nodes of their root namespace; `user_can_read` reads
``users`` (directory) and ``members``. Sharded (`memberships_sharded`,
`user_can_read_sharded`), the roles come from the directory's ``memberships`` copy and the
mount paths from the root namespace's shard; no shared folder's shard is asked.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Connection

from cubby.metadata.engine import Database
from cubby.metadata.schema import members, nodes, users
from cubby.metadata.shards import active_memberships
from cubby.model import Role


def read_memberships(conn: Connection, user_id: int, root_ns: int) -> tuple[dict[int, Role], dict[str, int]]:
    """The namespaces ``user_id`` reaches, with roles, and where each shared one is mounted
    (see the module docstring)."""
    active = {
        int(r.ns_id): r.role
        for r in conn.execute(
            select(members.c.ns_id, members.c.role).where(members.c.user_id == user_id, members.c.state == "active")
        )
    }
    return mounts_of(conn, root_ns, active)


def memberships(db: Database, user_id: int, root_ns: int) -> tuple[dict[int, Role], dict[str, int]]:
    """Roles by namespace and mounts of ``user_id`` (`read_memberships`), in one read."""
    return db.read(lambda c: read_memberships(c, user_id, root_ns))


def user_can_read(db: Database, user_id: int, ns_id: int) -> bool:
    """Whether ``user_id`` reaches ``ns_id`` now: their root, or an active membership.
    Links ask this of their creator on every download, so a removed member's links die."""

    def run(conn: Connection) -> bool:
        root = conn.execute(select(users.c.root_ns).where(users.c.id == user_id)).first()
        if root is not None and int(root[0]) == ns_id:
            return True
        return conn.execute(
            select(members.c.ns_id).where(
                members.c.ns_id == ns_id, members.c.user_id == user_id, members.c.state == "active"
            )
        ).first() is not None

    return db.read(run)


def mounts_of(conn: Connection, root_ns: int, active: dict[int, str]) -> tuple[dict[int, Role], dict[str, int]]:
    """Roles and mount paths from ``active`` memberships and the root namespace's mount nodes
    (``conn``: a transaction on the root's shard)."""
    roles: dict[int, Role] = {root_ns: "owner"}
    mounts: dict[str, int] = {}
    if active:
        for m in conn.execute(
            select(nodes.c.path, nodes.c.target_ns).where(
                nodes.c.ns_id == root_ns, nodes.c.target_ns.is_not(None), nodes.c.path_key.is_not(None)
            )
        ):
            ns = int(m.target_ns)
            if ns in active:
                mounts[str(m.path)] = ns
                roles[ns] = active[ns]  # type: ignore[assignment]
    return roles, mounts


def memberships_sharded(
    directory: Database, root_db: Database, user_id: int, root_ns: int
) -> tuple[dict[int, Role], dict[str, int]]:
    """`memberships` on a sharded deployment: the active memberships from the directory's copy
    (`cubby.metadata.shards.active_memberships`), the mount paths from the root's shard. Two
    reads, on two databases; no shard of a shared folder is asked."""
    active = directory.read(lambda c: active_memberships(c, user_id))
    return root_db.read(lambda c: mounts_of(c, root_ns, active))


def user_can_read_sharded(directory: Database, user_id: int, ns_id: int) -> bool:
    """`user_can_read` from the directory alone: the user's root, or an active membership in
    the directory's copy."""

    def run(conn: Connection) -> bool:
        root = conn.execute(select(users.c.root_ns).where(users.c.id == user_id)).first()
        if root is not None and int(root[0]) == ns_id:
            return True
        return active_memberships(conn, user_id).get(ns_id) is not None

    return directory.read(run)


__all__ = ["memberships", "memberships_sharded", "mounts_of", "read_memberships", "user_can_read", "user_can_read_sharded"]
