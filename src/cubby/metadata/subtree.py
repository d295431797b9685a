"""Copying a folder's live contents into another namespace: read on one connection, write on
another, so that the two may be different databases (shards).

A share copies the folder it turns into a namespace, and an unshare copies the shared
namespace back into its owner's root. What is copied is each live node with its *current*
revision only (no history: a delete acknowledged before the share is never seen by a member,
neither as a file nor in history) and the chunk references those revisions need. Metadata
only: no chunk is read or written, so the cost grows with the number of nodes, not with their
bytes.

`read_subtree` runs on the source's database and answers plain rows (`Subtree`); `write_subtree`
runs inside a `NamespaceTxn` of the destination. On one database both run on one connection
(today's single-transaction share); across shards the share reads the frozen folder on the
owner's shard and writes the copy on the new namespace's (`cubby.metadata.share_steps`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from cubby.core import paths
from cubby.errors import Conflict
from cubby.metadata.nstxn import NamespaceTxn, key_range
from cubby.metadata.schema import CURRENT_REVISION, file_revs, journal, links, nodes

BATCH = 1000
"""Rows per multi-row insert."""


@dataclass
class Subtree:
    """The live nodes strictly below a folder (parents first), the current revision of each
    file by node id, and the links to any of them or to the folder itself."""

    prefix: str
    root_id: int
    nodes: list[Any]
    revs: dict[int, Any]
    links: list[dict[str, Any]] = field(default_factory=list)


def read_subtree(conn: Connection, ns_id: int, prefix: str, *, with_links: bool = False) -> Subtree:
    """What lies below folder ``prefix`` (or ``/``) of ``ns_id``, read on ``conn``. A mount
    below it is refused: shared folders do not nest."""
    cond = [nodes.c.ns_id == ns_id, nodes.c.path_key.is_not(None), nodes.c.pending.is_(None)]
    root_id = 0
    if prefix != paths.ROOT:
        key = paths.key(prefix)
        lo, hi = key_range(key)
        cond += [nodes.c.path_key > lo, nodes.c.path_key < hi]
        root_id = int(conn.execute(select(nodes.c.node_id).where(nodes.c.ns_id == ns_id, nodes.c.path_key == key)).one()[0])
    live = conn.execute(select(nodes).where(*cond).order_by(nodes.c.path_key)).all()
    for n in live:
        if n.kind == "mount":
            raise Conflict(f"{n.path} is a shared folder; shared folders cannot nest", code="contains_shared_folder")
    revs = {
        int(r.node_id): r
        for r in conn.execute(
            select(file_revs).select_from(file_revs.join(nodes, CURRENT_REVISION)).where(*cond, nodes.c.kind == "file")
        )
    }
    found: list[dict[str, Any]] = []
    if with_links:
        ids = [root_id] + [int(n.node_id) for n in live]
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            found += [dict(r._mapping) for r in conn.execute(select(links).where(links.c.ns_id == ns_id, links.c.node_id.in_(part)))]
    return Subtree(prefix, root_id, list(live), revs, found)


def write_subtree(src: Subtree, dst: NamespaceTxn, dst_prefix: str, *, dst_parent: int, keep_ids: bool) -> int:
    """Write ``src`` below ``dst_prefix`` of ``dst``'s namespace, journalled parents first,
    each file with one revision and its chunk references (see the module docstring). With
    ``keep_ids`` the nodes keep their ids (a share: links and clients' ids stay valid), else
    they take new ones. Returns the number of nodes written."""
    conn = dst.conn
    ids: dict[int, int] = {src.root_id: dst_parent}
    node_rows: list[dict[str, Any]] = []
    rev_rows: list[dict[str, Any]] = []
    journal_rows: list[dict[str, Any]] = []
    refs: dict[str, int] = {}
    for n in src.nodes:
        new_path = paths.rebase(n.path, src.prefix, dst_prefix)
        node_id = int(n.node_id) if keep_ids else dst.new_node_id()
        ids[int(n.node_id)] = node_id
        parent_id = ids[int(n.parent_id)]
        jid = dst.next_jid()
        is_file = n.kind == "file"
        node_rows.append(
            {
                "ns_id": dst.ns_id, "node_id": node_id, "parent_id": parent_id, "name": n.name, "path": new_path,
                "path_key": paths.key(new_path), "kind": n.kind, "rev": jid, "content_rev": jid if is_file else None,
                "size": n.size, "content_hash": n.content_hash, "mtime": n.mtime, "deleted": False, "deleted_key": None,
                "target_ns": None, "pending": None, "mode": n.mode,
            }
        )
        if is_file:
            fr = src.revs[int(n.node_id)]
            rev_rows.append(
                {
                    "ns_id": dst.ns_id, "node_id": node_id, "rev": jid, "path": new_path, "size": fr.size,
                    "content_hash": fr.content_hash, "blocklist": fr.blocklist, "mtime": fr.mtime, "user_id": fr.user_id,
                    "created_at": fr.created_at, "mode": fr.mode,
                }
            )
            for h in {c[0] for c in json.loads(fr.blocklist)}:
                refs[h] = refs.get(h, 0) + 1
        journal_rows.append(
            {
                "ns_id": dst.ns_id, "jid": jid, "op": "add" if is_file else "mkdir", "node_id": node_id, "parent_id": parent_id,
                "kind": n.kind, "name": n.name, "path": new_path, "path_key": paths.key(new_path), "rev": jid, "size": n.size,
                "content_hash": n.content_hash, "mtime": n.mtime, "old_path": None, "old_parent_id": None,
                "user_id": dst.user_id, "created_at": dst.now, "mode": n.mode,
            }
        )
    if keep_ids and ids:
        dst.next_node = max(dst.next_node, max(ids.values()) + 1)
    for table, rows in ((nodes, node_rows), (file_revs, rev_rows), (journal, journal_rows)):
        for i in range(0, len(rows), BATCH):
            conn.execute(insert(table), rows[i : i + BATCH])
    if refs:
        for h, count in refs.items():
            dst.ref_counts[h] = dst.ref_counts.get(h, 0) + count
        dst.flush()
    return len(src.nodes)


__all__ = ["BATCH", "Subtree", "read_subtree", "write_subtree"]
