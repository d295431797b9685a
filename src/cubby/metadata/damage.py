"""What `cubby admin check` asks of the metadata: the chunks held, and the files a damaged
chunk breaks.

Both read in pages or streams, so a check of a large deployment holds one page (or one
row) at a time, never the whole table. The chunk tables (``blocks``) are read on the chunk
database and the namespace tables (``nodes``, ``file_revs``) on each namespace database in
turn, never joined with each other (`cubby.metadata.shards`: they may be different databases).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import and_, select
from sqlalchemy.engine import Connection

from cubby.metadata.engine import Database
from cubby.metadata.schema import blocks, file_revs, nodes

PAGE = 5000


def held_chunks(db: Database, page: int = PAGE) -> Iterator[list[str]]:
    """The hashes of the ``blocks`` table (chunks the server holds and deduplicates against),
    in pages of at most ``page``, in hash order."""
    last = ""

    def after(conn: Connection) -> list[str]:
        q = select(blocks.c.hash).where(blocks.c.hash > last).order_by(blocks.c.hash).limit(page)
        return [str(r[0]) for r in conn.execute(q)]

    while True:
        rows = db.read(after)
        if not rows:
            return
        yield rows
        last = rows[-1]


@dataclass(frozen=True)
class DamagedFile:
    """A current file (not deleted) whose content has ``chunks`` damaged chunks: its namespace
    and the path within it (a shared folder's files are named within its own namespace)."""

    ns_id: int
    path: str
    rev: int
    chunks: int

    def to_dict(self) -> dict[str, object]:
        return {"ns_id": self.ns_id, "path": self.path, "rev": self.rev, "chunks": self.chunks}


def files_with_chunks(
    databases: Iterable[Database], damaged: Collection[str], *, limit: int = 1000
) -> tuple[list[DamagedFile], int]:
    """Current files that reference any of ``damaged``: the first ``limit`` (by namespace and
    path) and how many there are in all. Each file's chunk list is read once, streamed."""
    wanted = frozenset(damaged)
    if not wanted:
        return [], 0
    q = (
        select(nodes.c.ns_id, nodes.c.path, file_revs.c.rev, file_revs.c.blocklist)
        .select_from(
            nodes.join(
                file_revs,
                and_(
                    file_revs.c.ns_id == nodes.c.ns_id,
                    file_revs.c.node_id == nodes.c.node_id,
                    file_revs.c.rev == nodes.c.content_rev,
                ),
            )
        )
        .where(nodes.c.kind == "file", nodes.c.deleted.is_(False))
    )

    def scan(conn: Connection) -> list[DamagedFile]:
        hit: list[DamagedFile] = []
        for ns_id, path, rev, blocklist in conn.execution_options(stream_results=True, yield_per=1000).execute(q):
            n = sum(1 for h, _size in json.loads(blocklist) if h in wanted)
            if n:
                hit.append(DamagedFile(int(ns_id), str(path), int(rev), n))
        return hit

    found: dict[tuple[int, str], DamagedFile] = {}
    for db in databases:
        for f in db.read(scan):
            found.setdefault((f.ns_id, f.path), f)  # a namespace mid-move is on two shards
    ordered = sorted(found.values(), key=lambda f: (f.ns_id, f.path))
    return ordered[:limit], len(ordered)


__all__ = ["PAGE", "DamagedFile", "files_with_chunks", "held_chunks"]
