"""What `cubby admin check` asks of the metadata: the chunks held, the files a damaged chunk
breaks, and (``--repair``) forgetting damaged chunks so that their bytes can be sent again.

Each reads in pages or streams, so a check of a large deployment holds one page (or one
row) at a time, never the whole table. The chunk tables (``blocks``) are read on the chunk
database and the namespace tables (``nodes``, ``file_revs``) on each namespace database in
turn, never joined with each other (`cubby.metadata.shards`: they may be different databases).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, Select

from cubby.blockstore.index import ChunkIndex
from cubby.metadata.engine import Database
from cubby.metadata.schema import CURRENT_REVISION, blocks, file_revs, nodes

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


def _current_files(*columns: ColumnElement[Any]) -> Select[Any]:
    """``columns`` of every current file (not deleted), joined to its current revision."""
    return (
        select(*columns)
        .select_from(nodes.join(file_revs, CURRENT_REVISION))
        .where(nodes.c.kind == "file", nodes.c.deleted.is_(False))
    )


def referenced_chunks(databases: Iterable[Database], files: int = 1000) -> Iterator[list[str]]:
    """The chunks of every current file (not deleted), a page per ``files`` files, read from each
    namespace database in turn in (namespace, node) order, one short read per page: what
    `cubby admin check --files` looks for in the store. A chunk that files of several pages
    share comes once per page (a set of every hash would hold the deployment's whole chunk list)."""

    def page(after: tuple[int, int], conn: Connection) -> list[tuple[int, int, str]]:
        q = (
            _current_files(nodes.c.ns_id, nodes.c.node_id, file_revs.c.blocklist)
            .where(tuple_(nodes.c.ns_id, nodes.c.node_id) > tuple_(*after))
            .order_by(nodes.c.ns_id, nodes.c.node_id)
            .limit(files)
        )
        return [(int(a), int(b), str(c)) for a, b, c in conn.execute(q)]

    for db in databases:
        last = (-1, -1)
        while rows := db.read(functools.partial(page, last)):
            last = rows[-1][0], rows[-1][1]
            yield sorted({h for _, _, blocklist in rows for h, _size in json.loads(blocklist)})


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
    q = _current_files(nodes.c.ns_id, nodes.c.path, file_revs.c.rev, file_revs.c.blocklist)

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


def forget_damaged(db: Database, index: ChunkIndex, places: Mapping[str, str | None]) -> list[str]:
    """Forget each damaged chunk (its ``blocks`` row and its index location, in one transaction
    on the chunk database ``db``, which ``index`` is on) if it is still where it was found
    damaged (``places``: its pack, None for no place); return those forgotten, sorted.

    Why: while its ``blocks`` row stands, the server believes it holds the chunk, and every
    upload of the same bytes is deduplicated against bytes it cannot read. Forgotten, the
    chunk is asked for again by the next commit that names it, and the upload that sends it
    stores it anew, which mends every file that references it: reads go by hash. Its
    ``ns_chunks`` rows (the files' references) stay, and the damaged bytes in their pack
    become dead space that `PackBlockStore.compact` reclaims.

    Under the same locks as the collector's (the ``blocks`` rows, `cubby.metadata.collector`):
    an upload of the chunk either finished before (its row and location are what is forgotten,
    unless a compaction or the upload moved it elsewhere: then it is left, to be checked again)
    or runs after, finds the row gone and the index without the chunk, and stores the bytes.
    The location goes too, else the collector's `adopt_orphans` would give the chunk its row back."""
    names = sorted(places)
    forgotten: list[str] = []
    for i in range(0, len(names), 500):
        batch = names[i : i + 500]

        def run(conn: Connection, batch: list[str] = batch) -> list[str]:
            q = select(blocks.c.hash).where(blocks.c.hash.in_(batch))
            conn.execute(q if db.is_sqlite else q.with_for_update()).all()
            now = index.lookup(batch)  # on ``db``: joins this transaction
            gone = [h for h in batch if (now[h].pack if h in now else None) == places[h]]
            if gone:
                index.forget(gone)
                conn.execute(delete(blocks).where(blocks.c.hash.in_(gone)))
            return gone

        forgotten.extend(db.write(run))
    return forgotten


__all__ = ["PAGE", "DamagedFile", "files_with_chunks", "forget_damaged", "held_chunks", "referenced_chunks"]
