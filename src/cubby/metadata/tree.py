"""Rules of a namespace's tree that every writer applies inside its `NamespaceTxn`: writes
below a mount point are refused, missing parent folders are created, and a revision named
before a share still matches the unchanged copy.

Used by the file writes (`cubby.metadata.writes`), shares and cross-namespace moves alike, so
that each applies them the same way. All stay in the transaction's namespace but
one case: on one database `same_as_before_share` reads the copied node in the owner's root;
on a sharded deployment it reads the old revisions the share recorded beside the copy.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select, update

from cubby.core import paths
from cubby.errors import BadRequest, Conflict, NamespaceMoved, NotFound
from cubby.metadata.nstxn import ROOT_NODE, NamespaceTxn, key_range
from cubby.metadata.schema import namespaces, nodes, share_origins, users


def same_as_before_share(tx: NamespaceTxn, row: Any, expected_rev: int) -> bool:
    """Whether ``expected_rev`` is the revision ``row`` had in its owner's root namespace
    when the share copied it, and it has not changed since.

    Sharing renumbers what it copies (a revision is a journal id of its namespace), so a
    client that read a file before the share, or a request that raced the share and was
    resolved again, names the old revision. It is the same version, so it must not be a
    conflict; any change since the copy has a revision above the cut and still is one.

    A share on a sharded deployment recorded the old revisions beside the copy
    (``share_origins``, on the shared namespace's shard); on one database the owner's root
    still holds the copied nodes (deleted, their revisions kept), read in this transaction."""
    if tx.share_origin is None:
        cut = tx.conn.execute(select(namespaces.c.cut).where(namespaces.c.ns_id == tx.ns_id)).first()
        tx.share_origin = cut[0] if cut is not None and cut[0] is not None else False
    cut = tx.share_origin
    if cut is False or int(row.rev) > int(cut):
        return False
    origin = tx.conn.execute(
        select(share_origins.c.rev).where(share_origins.c.ns_id == tx.ns_id, share_origins.c.node_id == int(row.node_id))
    ).first()
    if origin is None:
        origin = tx.conn.execute(
            select(nodes.c.rev)
            .select_from(namespaces.join(users, users.c.id == namespaces.c.owner_id))
            .join(nodes, (nodes.c.ns_id == users.c.root_ns) & (nodes.c.node_id == int(row.node_id)))
            .where(namespaces.c.ns_id == tx.ns_id)
        ).first()
    return origin is not None and int(origin[0]) == int(expected_rev)


def guard_mounts(tx: NamespaceTxn, path: str) -> None:
    """Refuse, retryably, a write whose path lies below a mount point of this namespace.

    Such a write resolved its path before the folder became a shared folder (its own
    namespace) and reached this namespace after the share committed: applying it here would
    put it where no one sees it, so it must be resolved again and land in the new namespace.
    Every writer of a namespace holds that namespace's lock, so this check and the share
    are ordered: each write lands on exactly one side of the cut."""
    for a in paths.ancestors(path):
        row = tx.live(paths.key(a))
        if row is None or row.kind == "file":
            return  # nothing deeper exists, or the write fails on its own
        if row.kind == "mount":
            raise NamespaceMoved(f"{row.path} became a shared folder; resolve {path} again and retry", path=row.path)
        if is_frozen(row):
            raise NamespaceMoved(f"{row.path} is becoming a shared folder; retry {path} in a moment", path=row.path)


def is_frozen(row: Any) -> bool:
    """Whether the live folder ``row`` is frozen by a share in progress on another shard
    (`cubby.metadata.share_steps`): what lies below it is being copied, so nothing may be
    written there until the share mounts the copy or is undone. Writers get the retryable
    `NamespaceMoved`, as a write that raced a finished share does."""
    return row.kind == "folder" and getattr(row, "pending", None) is not None


def frozen_or_mount_below(tx: NamespaceTxn, key: str) -> Any:
    """The first mount or frozen folder strictly below folder ``key``, or None: a folder
    holding one can be neither deleted nor moved to another namespace."""
    lo, hi = key_range(key)
    return tx.conn.execute(
        select(nodes.c.path)
        .where(nodes.c.ns_id == tx.ns_id, nodes.c.path_key > lo, nodes.c.path_key < hi)
        .where(or_(nodes.c.target_ns.is_not(None), nodes.c.pending.is_not(None)))
        .limit(1)
    ).first()


def _folder_of(row: Any, path: str, wanted: str | None) -> tuple[int, str]:
    """Node id and display path of the existing node ``row`` at ``path``, which must be a plain
    folder for something to be written in it (``wanted``: what, for the error)."""
    if row.kind == "mount":
        raise NamespaceMoved(f"{row.path} became a shared folder; resolve {path} again and retry", path=row.path)
    if is_frozen(row):
        raise NamespaceMoved(f"{row.path} is becoming a shared folder; retry {path} in a moment", path=row.path)
    if row.kind != "folder":
        what = f"so it cannot hold {wanted}" if wanted is not None else "not a folder"
        raise Conflict(f"{row.path} is a file, {what}", code="not_a_folder")
    return int(row.node_id), str(row.path)


def check_folders(tx: NamespaceTxn, path: str) -> None:
    """Refuse, without writing anything, what `ensure_folder` of ``path``'s parent would
    refuse: its nearest existing ancestor must be a plain folder."""
    for folder in reversed(paths.ancestors(path)):
        row = tx.live(paths.key(folder))
        if row is not None:
            _folder_of(row, folder, path)
            return


def ensure_folder(tx: NamespaceTxn, path: str, *, wanted: str | None = None) -> tuple[int, str]:
    """Node id and display path of the folder at ``path``, creating it and its missing
    parents. A new node's display path is its parent's display path plus its own name, so
    that the spelling of every ancestor is the one it was created with. (``wanted``: the path
    the caller asked for, when ``path`` is one of its parents, for the error that names it.)"""
    if path == paths.ROOT:
        return ROOT_NODE, paths.ROOT
    row = tx.live(paths.key(path))
    if row is not None:
        return _folder_of(row, path, wanted)
    parent, name = paths.split(path)
    parent_id, parent_path = ensure_folder(tx, parent, wanted=wanted or path)
    path = paths.join(parent_path, name)
    node_id = tx.new_node_id()
    jid = tx.next_jid()
    values = {
        "parent_id": parent_id,
        "name": paths.split(path)[1],
        "path": path,
        "path_key": paths.key(path),
        "kind": "folder",
        "rev": jid,
        "content_rev": None,
        "size": 0,
        "content_hash": None,
        "mtime": None,
        "deleted": False,
        "deleted_key": None,
    }
    tx.put_node(node_id, values, new=True)
    tx.journal("mkdir", node_id=node_id, parent_id=parent_id, kind="folder", path=path, rev=jid)
    return node_id, path


def remove_node(tx: NamespaceTxn, row: Any) -> int:
    """Mark the live node ``row`` deleted, with everything below it if it is a folder, and
    journal one ``delete`` for it; answers that journal id. Each node keeps its row and the
    key it had (``deleted_key``), so history and undelete can find it. The caller has checked
    that the removal is allowed (no mount below it, the expected revision)."""
    key = str(row.path_key)
    jid = tx.next_jid()
    if row.kind == "folder":
        lo, hi = key_range(key)
        tx.conn.execute(
            update(nodes)
            .where(nodes.c.ns_id == tx.ns_id, nodes.c.path_key > lo, nodes.c.path_key < hi)
            # MySQL applies SET clauses in order: copy the key before clearing it.
            .ordered_values((nodes.c.deleted_key, nodes.c.path_key), (nodes.c.path_key, None), (nodes.c.deleted, True))
        )
    tx.conn.execute(
        update(nodes)
        .where(nodes.c.ns_id == tx.ns_id, nodes.c.node_id == row.node_id)
        .values(deleted=True, deleted_key=key, path_key=None, rev=jid)
    )
    tx.journal(
        "delete", node_id=row.node_id, parent_id=row.parent_id, kind=row.kind, path=row.path, rev=jid,
        size=row.size, content_hash=row.content_hash,
    )
    return jid


__all__ = [
    "check_folders", "ensure_folder", "frozen_or_mount_below", "guard_mounts", "is_frozen", "remove_node", "same_as_before_share",
]


def folder_to_share(tx: NamespaceTxn, path: str) -> Any:
    """The live node at ``path`` that a share would turn into a shared folder (a folder, or a
    mount when the folder is shared already), inside the root's transaction: `NotFound` if
    nothing is there, `BadRequest` ``not_a_folder`` for a file, the retryable
    `NamespaceMoved` if the path lies below a mount (`guard_mounts`). One check for both the
    one-database share (`cubby.metadata.shares`) and the steps across shards
    (`cubby.metadata.share_steps`)."""
    guard_mounts(tx, path)
    row = tx.live(paths.key(path))
    if row is None:
        raise NotFound(f"{path} does not exist")
    if row.kind == "file":
        raise BadRequest(f"{row.path} is a file; only folders can be shared", code="not_a_folder")
    return row
