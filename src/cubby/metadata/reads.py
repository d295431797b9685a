"""`FileReads`: what a namespace holds: heads, entries, listings, history, chunk lists, journal.

Every read here is about one namespace and runs in one read transaction of the `Database` it
is given, so a shard router can hand each namespace its own. Only `heads` takes many
namespaces (the notification role asks for all of a client's at once): sharded, it asks each
shard for its namespaces and joins the answers, which needs no intent since each head is read
on its own anyway.
"""

from __future__ import annotations

import base64
import builtins
import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Row

from cubby.core import paths
from cubby.errors import BadRequest, Conflict, CubbyError, NamespaceGone, NamespaceMoved, NotFound
from cubby.metadata.engine import Database
from cubby.metadata.nstxn import ROOT_NODE, entry_of, key_range, root_entry
from cubby.metadata.schema import CURRENT_REVISION, file_revs, journal, namespaces, nodes
from cubby.model import ChunkRef, Entry, JournalEntry, Listing, Revision

HEADS_PER_QUERY = 1000
BLOCKLISTS_PER_QUERY = 500
"""Paths per statement of `FileReads.blocklists` (within every engine's limit on bound values)."""


def chunk_list(blocklist: str) -> list[ChunkRef]:
    """A ``file_revs.blocklist`` column (JSON of [hash, size] pairs) as chunk references."""
    return [ChunkRef(h, s) for h, s in json.loads(blocklist)]


def live_node(conn: Connection, ns_id: int, path: str) -> Row[Any] | None:
    return conn.execute(
        select(nodes).where(nodes.c.ns_id == ns_id, nodes.c.path_key == paths.key(path))
    ).first()


def missing_error(conn: Connection, ns_id: int, path: str) -> CubbyError:
    """The error for a path with no live node: `NamespaceMoved` when an ancestor became a
    shared folder after the caller resolved the path (a read that raced the share), else
    `NotFound`."""
    for a in paths.ancestors(path):
        row = live_node(conn, ns_id, a)
        if row is None or row.kind == "file":
            break
        if row.kind == "mount":
            return NamespaceMoved(f"{row.path} became a shared folder; resolve {path} again", path=row.path)
    return NotFound(f"{path} does not exist")


def node_for_history(conn: Connection, ns_id: int, path: str) -> int:
    row = live_node(conn, ns_id, path)
    if row is not None:
        if row.kind != "file":
            raise Conflict(f"{path} is a folder; only files have history", code="not_a_file")
        return int(row.node_id)
    gone = conn.execute(
        select(nodes.c.node_id)
        .where(nodes.c.ns_id == ns_id, nodes.c.deleted_key == paths.key(path), nodes.c.kind == "file")
        .order_by(nodes.c.rev.desc())
        .limit(1)
    ).first()
    if gone is not None:
        return int(gone[0])
    last = conn.execute(
        select(journal.c.node_id)
        .where(journal.c.ns_id == ns_id, journal.c.path_key == paths.key(path), journal.c.kind == "file")
        .order_by(journal.c.jid.desc())
        .limit(1)
    ).first()
    if last is None:
        raise NotFound(f"{path} has no history")
    return int(last[0])


class FileReads:
    """The reads of one metadata database (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def head(self, ns_id: int) -> int:
        row = self.db.read(
            lambda c: c.execute(select(namespaces.c.head).where(namespaces.c.ns_id == ns_id)).first()
        )
        if row is None:
            raise NamespaceGone(f"namespace {ns_id} does not exist")
        return int(row[0])

    def heads(self, ns_ids: Iterable[int]) -> dict[int, int]:
        """The journal heads of many namespaces, a thousand per query (unknown ones are left
        out): what the notification role compares its subscribers' cursors against."""
        ids = sorted({int(n) for n in ns_ids})
        out: dict[int, int] = {}
        for i in range(0, len(ids), HEADS_PER_QUERY):
            part = ids[i : i + HEADS_PER_QUERY]
            rows = self.db.read(
                lambda c, part=part: c.execute(  # type: ignore[misc]
                    select(namespaces.c.ns_id, namespaces.c.head).where(namespaces.c.ns_id.in_(part))
                ).all()
            )
            out.update({int(r[0]): int(r[1]) for r in rows})
        return out

    def stat(self, ns_id: int, path: str) -> Entry:
        path = paths.normalize(path)
        if path == paths.ROOT:
            return root_entry(ns_id, self.head(ns_id))

        def run(conn: Connection) -> Entry:
            row = live_node(conn, ns_id, path)
            if row is None:
                raise missing_error(conn, ns_id, path)
            return entry_of(row)

        return self.db.read(run)

    def list(
        self, ns_id: int, path: str, recursive: bool = False, cursor: str | None = None, limit: int = 1000
    ) -> Listing:
        path = paths.normalize(path)
        limit = max(1, min(int(limit), 10_000))
        after: str | None = None
        if cursor:
            try:
                after = base64.b64decode(cursor.encode("ascii"), altchars=b"-_", validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadRequest("invalid listing cursor: pass back the cursor of the previous page") from exc

        def run(conn: Connection) -> builtins.list[Row[Any]]:
            if path == paths.ROOT:
                folder_id = ROOT_NODE
                if not conn.execute(select(namespaces.c.ns_id).where(namespaces.c.ns_id == ns_id)).first():
                    raise NamespaceGone(f"namespace {ns_id} does not exist")
            else:
                folder = live_node(conn, ns_id, path)
                if folder is None:
                    raise NotFound(f"{path} does not exist")
                if folder.kind == "mount":
                    raise NamespaceMoved(f"{path} is a shared folder now; resolve it again", path=path)
                if folder.kind != "folder":
                    raise Conflict(f"{path} is a file, not a folder", code="not_a_folder")
                folder_id = folder.node_id
            q = select(nodes).where(nodes.c.ns_id == ns_id, nodes.c.path_key.is_not(None))
            if recursive:
                lo, hi = key_range(paths.key(path))
                if path != paths.ROOT:
                    q = q.where(nodes.c.path_key > lo, nodes.c.path_key < hi)
            else:
                q = q.where(nodes.c.parent_id == folder_id)
            if after is not None:
                q = q.where(nodes.c.path_key > after)
            return list(conn.execute(q.order_by(nodes.c.path_key).limit(limit + 1)).all())

        rows = self.db.read(run)
        has_more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if rows:
            last_key = paths.key(rows[-1].path)
            next_cursor = base64.urlsafe_b64encode(last_key.encode("utf-8")).decode("ascii")
        elif cursor:
            next_cursor = cursor
        return Listing(entries=[entry_of(r) for r in rows], cursor=next_cursor, has_more=has_more)

    def history(self, ns_id: int, path: str, limit: int = 100) -> builtins.list[Revision]:
        path = paths.normalize(path)

        def run(conn: Connection) -> builtins.list[Revision]:
            node_id = node_for_history(conn, ns_id, path)
            node = conn.execute(
                select(nodes.c.deleted).where(nodes.c.ns_id == ns_id, nodes.c.node_id == node_id)
            ).first()
            rows = conn.execute(
                select(file_revs)
                .where(file_revs.c.ns_id == ns_id, file_revs.c.node_id == node_id)
                .order_by(file_revs.c.rev.desc())
                .limit(max(1, min(int(limit), 10_000)))
            ).all()
            gone = bool(node and node.deleted)
            return [
                Revision(
                    ns_id=ns_id,
                    node_id=node_id,
                    rev=r.rev,
                    path=r.path,
                    size=r.size,
                    content_hash=r.content_hash,
                    mtime=r.mtime,
                    created_at=r.created_at,
                    deleted=gone and i == 0,
                )
                for i, r in enumerate(rows)
            ]

        return self.db.read(run)

    def blocklist(self, ns_id: int, path: str, rev: int | None = None) -> tuple[Entry, builtins.list[ChunkRef]]:
        return self.db.read(lambda conn: self._blocklist(conn, ns_id, paths.normalize(path), rev))

    def blocklists(
        self, ns_id: int, paths_: Sequence[str]
    ) -> builtins.list[tuple[Entry, builtins.list[ChunkRef]] | CubbyError]:
        """The current chunk lists of many files in one read (a download of many small files
        asks for a thousand at a time); each path gets its own outcome."""

        def run(conn: Connection) -> builtins.list[tuple[Entry, builtins.list[ChunkRef]] | CubbyError]:
            normal: builtins.list[str | CubbyError] = []
            for raw in paths_:
                try:
                    normal.append(paths.normalize(raw))
                except CubbyError as exc:
                    normal.append(exc)
            found = self._current_blocklists(conn, ns_id, [p for p in normal if isinstance(p, str)])
            out: builtins.list[tuple[Entry, builtins.list[ChunkRef]] | CubbyError] = []
            for path in normal:
                if isinstance(path, CubbyError):
                    out.append(path)
                    continue
                got = found.get(paths.key(path))
                if got is not None:
                    out.append(got)
                    continue
                try:  # not a live file: the single read says why (missing, a folder, moved)
                    out.append(self._blocklist(conn, ns_id, path, None))
                except CubbyError as exc:
                    out.append(exc)
            return out

        return self.db.read(run)

    def _current_blocklists(
        self, conn: Connection, ns_id: int, paths_: Sequence[str]
    ) -> dict[str, tuple[Entry, builtins.list[ChunkRef]]]:
        """path key -> entry and current chunk list of each live file among ``paths_``, a few
        hundred paths per statement (two statements per path, as `_blocklist` reads them, made
        a download's thousand-path request cost the server a second of CPU)."""
        found: dict[str, tuple[Entry, builtins.list[ChunkRef]]] = {}
        keys = list(dict.fromkeys(paths.key(p) for p in paths_))
        for i in range(0, len(keys), BLOCKLISTS_PER_QUERY):
            rows = conn.execute(
                select(nodes, file_revs.c.blocklist.label("fr_blocklist"))
                .join(file_revs, CURRENT_REVISION)
                .where(nodes.c.ns_id == ns_id, nodes.c.path_key.in_(keys[i : i + BLOCKLISTS_PER_QUERY]), nodes.c.kind == "file")
            ).all()
            for row in rows:
                found[row.path_key] = (entry_of(row), chunk_list(row.fr_blocklist))
        return found

    def _blocklist(self, conn: Connection, ns_id: int, path: str, rev: int | None) -> tuple[Entry, builtins.list[ChunkRef]]:
        node = live_node(conn, ns_id, path)
        if rev is None:
            if node is None:
                raise missing_error(conn, ns_id, path)
            if node.kind != "file":
                raise Conflict(f"{path} is a folder, not a file", code="not_a_file")
            want = node.content_rev
            node_id = node.node_id
        else:
            node_id = node_for_history(conn, ns_id, path)
            want = rev
        fr = conn.execute(
            select(file_revs).where(
                file_revs.c.ns_id == ns_id, file_revs.c.node_id == node_id, file_revs.c.rev == want
            )
        ).first()
        if fr is None:
            raise NotFound(f"{path} has no revision {rev}")
        entry = (
            entry_of(node)
            if node is not None and rev is None
            else Entry(
                ns_id=ns_id,
                node_id=node_id,
                parent_id=None,
                path=fr.path,
                name=paths.split(fr.path)[1],
                kind="file",
                rev=fr.rev,
                size=fr.size,
                content_hash=fr.content_hash,
                mtime=fr.mtime,
                mode=fr.mode,
            )
        )
        return entry, chunk_list(fr.blocklist)

    def journal(self, ns_id: int, after: int, limit: int = 1000) -> builtins.list[JournalEntry]:
        limit = max(1, min(int(limit), 10_000))
        rows = self.db.read(
            lambda c: c.execute(
                select(journal)
                .where(journal.c.ns_id == ns_id, journal.c.jid > int(after))
                .order_by(journal.c.jid)
                .limit(limit)
            ).all()
        )
        return [
            JournalEntry(
                ns_id=r.ns_id,
                jid=r.jid,
                op=r.op,
                node_id=r.node_id,
                parent_id=r.parent_id,
                kind=r.kind,
                path=r.path,
                name=r.name,
                rev=r.rev,
                size=r.size,
                content_hash=r.content_hash,
                mtime=r.mtime,
                old_path=r.old_path,
                old_parent_id=r.old_parent_id,
                user_id=r.user_id,
                created_at=r.created_at,
                mode=r.mode,
            )
            for r in rows
        ]


__all__ = ["FileReads", "chunk_list", "live_node", "missing_error", "node_for_history"]
