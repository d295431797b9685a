"""Deleted files of one folder: what the web app offers to undelete.

A deleted node keeps its row (``deleted``, ``deleted_key`` = the key it had), so a folder's
deleted children are one index range on ``(ns_id, parent_id)``. Undelete itself is a restore of
the file's last revision (`SqlMetadataStore.restore`), so this module only reads.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from cubby.core import paths
from cubby.errors import Conflict, NotFound
from cubby.metadata.engine import Database
from cubby.metadata.schema import nodes

MAX_DELETED = 1000


def deleted_in(db: Database, ns_id: int, folder: str, limit: int = MAX_DELETED) -> list[dict[str, Any]]:
    """Files deleted directly in ``folder`` (a path inside ``ns_id``), most recent first, one
    row per path (the latest node that had it): ``{path, name, size, rev, mtime}``."""
    folder = paths.normalize(folder)

    def run(conn: Any) -> list[dict[str, Any]]:
        parent = 0
        if folder != paths.ROOT:
            row = conn.execute(
                select(nodes.c.node_id, nodes.c.kind).where(
                    nodes.c.ns_id == ns_id, nodes.c.path_key == paths.key(folder)
                )
            ).first()
            if row is None:
                raise NotFound(f"{folder} does not exist")
            if row.kind != "folder":
                raise Conflict(f"{folder} is not a folder", code="not_a_folder")
            parent = int(row.node_id)
        rows = conn.execute(
            select(nodes.c.path, nodes.c.name, nodes.c.size, nodes.c.rev, nodes.c.mtime, nodes.c.deleted_key)
            .where(
                nodes.c.ns_id == ns_id, nodes.c.parent_id == parent, nodes.c.deleted.is_(True),
                nodes.c.kind == "file",
            )
            .order_by(nodes.c.rev.desc())
            .limit(limit * 4)
        ).all()
        live = {
            r[0]
            for r in conn.execute(
                select(nodes.c.path_key).where(
                    nodes.c.ns_id == ns_id, nodes.c.path_key.in_([r.deleted_key for r in rows if r.deleted_key])
                )
            ).all()
        } if rows else set()
        out: list[dict[str, Any]] = []
        seen: set[Any] = set()
        for r in rows:
            if r.deleted_key is None or r.deleted_key in seen or r.deleted_key in live:
                continue  # a path deleted twice shows once; one that exists again is not "deleted"
            seen.add(r.deleted_key)
            out.append({"path": r.path, "name": r.name, "size": int(r.size or 0), "rev": int(r.rev), "mtime": r.mtime})
            if len(out) >= limit:
                break
        return out

    return db.read(run)
