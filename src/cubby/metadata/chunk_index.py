"""`SqlChunkIndex`: the pack store's chunk index (`cubby.blockstore.index`) on the metadata database.

Tables ``chunk_index``, ``packs``, ``deleted_packs`` and ``unreadable_chunks`` (see
`cubby.metadata.schema`); every statement here touches only them, keyed by chunk hash or pack
id, so that the index can later move to databases of its own, split by hash prefix. Each call
runs in its own transaction, or joins the caller's when the garbage collector or an upload
calls in while holding row locks on the same database (`Database.write` joins on the same
thread).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.engine import Connection

from cubby.blockstore.index import NewPack, PackUsage
from cubby.blockstore.packfile import Location
from cubby.metadata import sqlitedriver
from cubby.metadata.engine import Database
from cubby.metadata.schema import chunk_index, deleted_packs, packs, unreadable_chunks

_BATCH = 500


class SqlChunkIndex:
    def __init__(self, db: Database) -> None:
        self.db = db

    def lookup(self, hashes: Sequence[str]) -> dict[str, Location]:
        wanted = sorted(set(hashes))
        if not wanted:
            return {}

        def run(conn: Connection) -> dict[str, Location]:
            out: dict[str, Location] = {}
            c = chunk_index.c
            for i in range(0, len(wanted), _BATCH):
                part = wanted[i : i + _BATCH]
                rows: Sequence[Sequence[Any]]
                if self.db.is_sqlite:  # the driver: SQLAlchemy's expanding IN cost more than the query
                    rows = sqlitedriver.chunk_rows(conn, "chunk_index", sqlitedriver.LOCATION_COLUMNS, part)
                else:
                    q = select(c.hash, c.pack, c.pos, c.stored_len, c.plain_len).where(c.hash.in_(part))
                    rows = conn.execute(q).all()
                for h, pack, pos, stored, plain in rows:
                    out[h] = Location(pack, int(pos), int(stored), int(plain))
            return out

        return self.db.read(run)

    def present(self, hashes: Sequence[str]) -> set[str]:
        """One SELECT of the hash column alone (one per `_BATCH` hashes when there are more):
        an upload of 1,000 small files asks this of 1,000 chunks, and a location object per
        chunk, built only to be thrown away, cost more than the query."""
        wanted = list(set(hashes))
        if not wanted:
            return set()

        def run(conn: Connection) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(wanted), _BATCH):
                part = wanted[i : i + _BATCH]
                if self.db.is_sqlite:
                    out.update(r[0] for r in sqlitedriver.chunk_rows(conn, "chunk_index", ("hash",), part))
                else:
                    out.update(r[0] for r in conn.execute(select(chunk_index.c.hash).where(chunk_index.c.hash.in_(part))))
            return out

        return self.db.read(run)

    def writes_to(self, db: object) -> bool:
        return db is self.db

    def add_packs(self, new: Sequence[NewPack]) -> None:
        if not new:
            return
        now = time.time()

        def run(conn: Connection) -> None:
            self.db.insert_ignore(
                conn, packs, [{"pack": p.pack, "size": p.size, "payload": p.payload, "created_at": now} for p in new]
            )
            rows = [_row(h, loc) for p in new for h, loc in p.entries]
            for i in range(0, len(rows), _BATCH):
                self.db.insert_ignore(conn, chunk_index, rows[i : i + _BATCH])

        self.db.write(run)

    def forget(self, hashes: Iterable[str]) -> None:
        names = sorted(set(hashes))
        if not names:
            return

        def run(conn: Connection) -> None:
            found = _any_found(conn)
            for i in range(0, len(names), _BATCH):
                part = names[i : i + _BATCH]
                conn.execute(delete(chunk_index).where(chunk_index.c.hash.in_(part)))
                if found:
                    conn.execute(delete(unreadable_chunks).where(unreadable_chunks.c.hash.in_(part)))

        self.db.write(run)

    def iterate(self) -> Iterator[str]:
        last = ""
        while True:
            page = self.db.read(functools.partial(_hashes_after, last))
            if not page:
                return
            yield from page
            last = page[-1]

    def locations_in(self, names: Sequence[str]) -> dict[str, Location]:
        c = chunk_index.c
        q = select(c.hash, c.pack, c.pos, c.stored_len, c.plain_len).where(c.pack.in_(list(names)))
        return self.db.read(
            lambda conn: {h: Location(p, int(pos), int(s), int(pl)) for h, p, pos, s, pl in conn.execute(q)}
        )

    def usage_after(self, after: str, limit: int) -> list[PackUsage]:
        """One page by the packs' primary key, then the live bytes of those packs alone
        through the index by pack: never a scan of the whole chunk index."""

        def run(conn: Connection) -> list[PackUsage]:
            rows = list(conn.execute(select(packs).where(packs.c.pack > after).order_by(packs.c.pack).limit(limit)))
            c = chunk_index.c
            live: dict[str, int] = {}
            for i in range(0, len(rows), _BATCH):
                part = [r.pack for r in rows[i : i + _BATCH]]
                live.update((p, int(n)) for p, n in conn.execute(select(c.pack, func.sum(c.stored_len)).where(c.pack.in_(part)).group_by(c.pack)))
            return [PackUsage(r.pack, int(r.size), int(r.payload), live.get(r.pack, 0), float(r.created_at)) for r in rows]

        return self.db.read(run)

    def switch(self, new: NewPack | None, moved_from: dict[str, str], retire: Sequence[str]) -> int:
        now = time.time()

        def run(conn: Connection) -> int:
            moved = 0
            if new is not None:
                self.db.insert_ignore(
                    conn, packs, [{"pack": new.pack, "size": new.size, "payload": new.payload, "created_at": now}]
                )
                c = chunk_index.c
                stmt = (
                    update(chunk_index)
                    .where(c.hash == bindparam("h"), c.pack == bindparam("old"))
                    .values(pack=bindparam("pack"), pos=bindparam("p"), stored_len=bindparam("s"), plain_len=bindparam("l"))
                )
                left: dict[str, list[str]] = {}  # old pack -> the chunks moved out of it
                for h, loc in new.entries:
                    res = conn.execute(
                        stmt, {"h": h, "old": moved_from[h], "pack": loc.pack, "p": loc.pos, "s": loc.stored_len, "l": loc.plain_len}
                    )
                    if res.rowcount:
                        moved += res.rowcount
                        left.setdefault(moved_from[h], []).append(h)
                _unmark(conn, left)
            if retire:
                still = {r[0] for r in conn.execute(select(chunk_index.c.pack).where(chunk_index.c.pack.in_(list(retire))).distinct())}
                gone = [p for p in retire if p not in still]
                if gone:
                    conn.execute(delete(packs).where(packs.c.pack.in_(gone)))
                    self.db.insert_ignore(conn, deleted_packs, [{"pack": p, "deleted_at": now} for p in gone])
            return moved

        return self.db.write(run)

    def mark_unreadable(self, found: dict[str, str]) -> None:
        """Replace any earlier finding for these chunks: the pack named last is the one an
        upload must move the chunk out of."""
        if not found:
            return
        now = time.time()
        names = sorted(found)

        def run(conn: Connection) -> None:
            for i in range(0, len(names), _BATCH):
                part = names[i : i + _BATCH]
                conn.execute(delete(unreadable_chunks).where(unreadable_chunks.c.hash.in_(part)))
                conn.execute(unreadable_chunks.insert(), [{"hash": h, "pack": found[h], "found_at": now} for h in part])

        self.db.write(run)

    def unreadable(self, hashes: Sequence[str] | None) -> dict[str, str]:
        u = unreadable_chunks.c
        if hashes is None:
            return self.db.read(lambda conn: {str(h): str(p) for h, p in conn.execute(select(u.hash, u.pack))})
        wanted = sorted(set(hashes))
        if not wanted:
            return {}

        def run(conn: Connection) -> dict[str, str]:
            out: dict[str, str] = {}
            for i in range(0, len(wanted), _BATCH):
                out.update((h, p) for h, p in conn.execute(select(u.hash, u.pack).where(u.hash.in_(wanted[i : i + _BATCH]))))
            return out

        return self.db.read(run)

    def clear_unreadable(self, found: dict[str, str]) -> None:
        by_pack: dict[str, list[str]] = {}
        for h, pack in sorted(found.items()):
            by_pack.setdefault(pack, []).append(h)
        if by_pack:
            self.db.write(lambda conn: _unmark(conn, by_pack))

    def unreadable_count(self) -> int:
        return int(self.db.read(lambda conn: conn.execute(select(func.count()).select_from(unreadable_chunks)).scalar_one()))

    def deleted_before(self, cutoff: float) -> list[str]:
        q = select(deleted_packs.c.pack).where(deleted_packs.c.deleted_at < cutoff)
        return self.db.read(lambda conn: [r[0] for r in conn.execute(q)])

    def purge(self, names: Sequence[str]) -> None:
        if names:
            self.db.write(lambda conn: conn.execute(delete(deleted_packs).where(deleted_packs.c.pack.in_(list(names)))))

    def known_among(self, names: Sequence[str]) -> set[str]:
        wanted = sorted(set(names))

        def run(conn: Connection) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(wanted), _BATCH):
                part = wanted[i : i + _BATCH]
                out.update(r[0] for r in conn.execute(select(packs.c.pack).where(packs.c.pack.in_(part))))
                out.update(r[0] for r in conn.execute(select(deleted_packs.c.pack).where(deleted_packs.c.pack.in_(part))))
            return out

        return self.db.read(run) if wanted else set()

    def newest_packs(self, limit: int) -> list[str]:
        holds = select(chunk_index.c.hash).where(chunk_index.c.pack == packs.c.pack).exists()
        q = select(packs.c.pack).where(holds).order_by(packs.c.pack.desc()).limit(limit)
        return self.db.read(lambda conn: [r[0] for r in conn.execute(q)])


def _any_found(conn: Connection) -> bool:
    """Whether any chunk is recorded unreadable: one probe, so that the statements that keep
    the findings true (a forget, a switch: thousands of chunks in a collection or a repack)
    cost nothing, and take no locks, while there are none, which is nearly always."""
    return conn.execute(select(unreadable_chunks.c.hash).limit(1)).first() is not None


def _unmark(conn: Connection, left: dict[str, list[str]]) -> None:
    """Drop the unreadable findings of chunks just moved out of the pack they were found in
    (by a repack, which read them, or a mend, which stored them again): whatever was wrong
    there is no longer where they are. Nothing to do, and one probe, when nothing was found."""
    u = unreadable_chunks.c
    if not left or not _any_found(conn):
        return
    for pack, hashes in left.items():
        for i in range(0, len(hashes), _BATCH):
            conn.execute(delete(unreadable_chunks).where(u.pack == pack, u.hash.in_(hashes[i : i + _BATCH])))


def _hashes_after(last: str, conn: Connection) -> list[str]:
    q = select(chunk_index.c.hash).where(chunk_index.c.hash > last).order_by(chunk_index.c.hash).limit(5000)
    return [r[0] for r in conn.execute(q)]


def _row(h: str, loc: Location) -> dict[str, object]:
    return {"hash": h, "pack": loc.pack, "pos": loc.pos, "stored_len": loc.stored_len, "plain_len": loc.plain_len}
