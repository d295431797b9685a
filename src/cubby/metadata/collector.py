"""`GarbageCollector`: removing chunks that no revision references any more.

How deduplication stays safe against collection: the ``blocks`` row of a chunk is the lock
that the uploader, the committer and the collector all take (committers in share mode). The
collector removes a chunk's row only while holding it and after seeing, in a fresh statement,
that no revision references it, and leaves a tombstone in the same transaction; it removes the
bytes later, in a transaction that holds the tombstone (see `collect_garbage`). An uploader
that finds the row gone deletes the tombstone (`cubby.metadata.chunks`).

What crosses namespaces: everything. A chunk is garbage only when no namespace references it,
so the sweep reads ``ns_chunks`` of every namespace against ``blocks``. On a sharded
deployment (a `ShardRouter` that is not `single`) the sweep locks ``blocks`` rows on the chunk
database and reads every shard's ``ns_chunks`` in fresh statements while holding them; commits
touch a chunk before they reference it, which is what makes that safe without a lock across
databases (the argument is in `cubby.metadata.shardchunks`). The tombstone protocol is the same.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from cubby.blockstore.base import BlockStore
from cubby.errors import CubbyError
from cubby.metadata import shardchunks
from cubby.metadata.engine import Database
from cubby.metadata.schema import blocks, chunk_tombstones, ns_chunks
from cubby.metadata.shards import ShardRouter
from cubby.model import GcStats


class GarbageCollector:
    """Collection over one metadata database and the block store it indexes."""

    def __init__(self, db: Database, router: ShardRouter | None = None) -> None:
        self.db = db
        """The chunk database (on one database, the only one)."""
        self.router = router if router is not None and not router.single else None

    def collect_garbage(
        self, blocks_store: BlockStore, grace_seconds: float, *, fault: Callable[[str], None] | None = None,
        progress: Callable[[GcStats], None] | None = None,
    ) -> GcStats:
        """Remove chunks that no revision references and nobody touched within the grace period.

        Two steps, so that bytes are never deleted before the rows that point at them are gone
        (a crash or a failed COMMIT between the two leaves only a tombstone, never a row without
        its bytes):

        1. **Sweep.** Lock the candidates' ``blocks`` rows, re-check in a fresh statement that
           no revision references them, delete their ``blocks`` and ``ns_chunks`` rows and
           write a tombstone for each, in one transaction.
        2. **Reclaim.** Lock the tombstones still there (an upload that brought a chunk back
           deleted its tombstone in the transaction that re-created its row), and with the
           locks held remove the bytes (`BlockStore.delete`: a pack store forgets the chunk's
           location, in this same transaction when its index is on this database) and then the
           tombstones.

        ``fault(step)`` is called for crash tests: before each step's commit ("sweeping",
        "reclaiming") and after it ("swept", "reclaimed"). ``progress`` gets the counts so far
        after each batch of candidates (a store of millions of chunks takes a while)."""
        hook = fault or (lambda _step: None)
        cutoff = time.time() - grace_seconds
        examined = deleted = freed = 0

        def candidates(conn: Connection) -> list[str]:
            if self.router is not None:  # references are on the shards: asked under the lock; paged by hash
                return [
                    r[0]
                    for r in conn.execute(
                        select(blocks.c.hash)
                        .where(blocks.c.touched_at < cutoff, blocks.c.hash > (max(seen) if seen else ""))
                        .order_by(blocks.c.hash)
                        .limit(500)
                    )
                ]
            referenced = select(ns_chunks.c.hash).where(ns_chunks.c.hash == blocks.c.hash, ns_chunks.c.refs > 0)
            return [
                r[0]
                for r in conn.execute(
                    select(blocks.c.hash).where(blocks.c.touched_at < cutoff, ~referenced.exists()).limit(500)
                )
            ]

        def sweep(conn: Connection, batch: list[str]) -> tuple[int, int]:
            q = select(blocks.c.hash, blocks.c.size).where(blocks.c.hash.in_(batch), blocks.c.touched_at < cutoff)
            if not self.db.is_sqlite:
                q = q.with_for_update()
            locked = {r[0]: int(r[1]) for r in conn.execute(q)}
            if not locked:
                return 0, 0
            if self.router is not None:
                # Every shard asked in fresh statements while the rows are locked: a commit
                # that references one of them touched it before (`shardchunks`).
                victims = sorted(shardchunks.unreferenced(self.router, list(locked)))
            else:
                # A fresh statement, after the locks: sees every commit that referenced these chunks.
                still = {
                    r[0]
                    for r in conn.execute(
                        select(ns_chunks.c.hash).where(ns_chunks.c.hash.in_(list(locked)), ns_chunks.c.refs > 0)
                    )
                }
                victims = sorted(set(locked) - still)
            if not victims:
                return 0, 0
            if self.router is None:
                conn.execute(delete(ns_chunks).where(ns_chunks.c.hash.in_(victims)))
            conn.execute(delete(blocks).where(blocks.c.hash.in_(victims)))
            now = time.time()
            self.db.insert_ignore(conn, chunk_tombstones, [{"hash": h, "at": now} for h in victims])
            hook("sweeping")  # rows deleted, not yet committed
            return len(victims), sum(locked[h] for h in victims)

        self.adopt_orphans(blocks_store)
        seen: set[str] = set()
        while True:
            batch = [h for h in self.db.read(candidates) if h not in seen]
            if not batch:
                break
            seen.update(batch)
            examined += len(batch)
            n, b = self.db.write(functools.partial(sweep, batch=batch))
            deleted += n
            freed += b
            if progress is not None:
                progress(GcStats(examined=examined, deleted=deleted, bytes_freed=freed))
            if self.router is not None and n:
                self._drop_grants(batch)
        hook("swept")
        self.reclaim_tombstones(blocks_store, hook)
        hook("reclaimed")
        return GcStats(examined=examined, deleted=deleted, bytes_freed=freed)

    def _drop_grants(self, batch: list[str]) -> None:
        """On each shard, the unused grants (``refs = 0``) of chunks now tombstoned. Only tidy:
        a grant of a chunk without a ``blocks`` row lets nothing be used, and a chunk uploaded
        again in between just gets asked for once more."""
        assert self.router is not None

        def tombstoned(conn: Connection) -> list[str]:
            return [r[0] for r in conn.execute(select(chunk_tombstones.c.hash).where(chunk_tombstones.c.hash.in_(batch)))]

        gone = self.db.read(tombstoned)
        if not gone:
            return
        for db in {id(d): d for d in self.router.shards.values()}.values():
            db.write(lambda c: c.execute(delete(ns_chunks).where(ns_chunks.c.hash.in_(gone), ns_chunks.c.refs == 0)))

    def reclaim_tombstones(self, blocks_store: BlockStore, hook: Callable[[str], None] = lambda _step: None) -> int:
        """Remove the bytes of tombstoned chunks (step 2 of `collect_garbage`); returns how many."""

        def page(conn: Connection) -> list[str]:
            return [r[0] for r in conn.execute(select(chunk_tombstones.c.hash).order_by(chunk_tombstones.c.hash).limit(500))]

        def reclaim(conn: Connection, batch: list[str]) -> int:
            q = select(chunk_tombstones.c.hash).where(chunk_tombstones.c.hash.in_(batch))
            if not self.db.is_sqlite:
                q = q.with_for_update()
            held = sorted(r[0] for r in conn.execute(q))
            if not held:
                return 0
            # Defensive: a chunk that has a row again is live whatever its tombstone says.
            alive = {r[0] for r in conn.execute(select(blocks.c.hash).where(blocks.c.hash.in_(held)))}
            gone = [h for h in held if h not in alive]
            for h in gone:
                blocks_store.delete(h)
            hook("reclaiming")  # bytes gone, tombstones not yet: a crash here loses nothing referenced
            conn.execute(delete(chunk_tombstones).where(chunk_tombstones.c.hash.in_(held)))
            return len(gone)

        total = 0
        while True:
            batch = self.db.read(page)
            if not batch:
                return total
            total += self.db.write(functools.partial(reclaim, batch=batch))

    def adopt_orphans(self, blocks_store: BlockStore) -> int:
        """Give a ``blocks`` row to every stored chunk that has none (a writer died between
        storing the bytes and recording them), touched now: a later collection, past the grace
        period, removes it under the same row lock as any other chunk. Bytes that do not match
        their name are removed at once."""
        adopted = 0
        batch: list[str] = []

        def flush(names: list[str]) -> int:
            # Tombstoned chunks are on their way out (`reclaim_tombstones`), not orphans.
            known = set(
                self.db.read(
                    lambda c: [r[0] for r in c.execute(select(blocks.c.hash).where(blocks.c.hash.in_(names)))]
                    + [r[0] for r in c.execute(select(chunk_tombstones.c.hash).where(chunk_tombstones.c.hash.in_(names)))]
                )
            )
            rows = []
            for h in names:
                if h in known:
                    continue
                try:
                    data = blocks_store.get(h)
                except CubbyError:
                    blocks_store.delete(h)  # unreadable or corrupt: it can never be served
                    continue
                rows.append({"hash": h, "size": len(data), "touched_at": time.time()})
            if rows:
                self.db.write(lambda c: self.db.insert_ignore(c, blocks, rows))
            return len(rows)

        for name in blocks_store.iterate():
            batch.append(name)
            if len(batch) >= 500:
                adopted += flush(batch)
                batch = []
        if batch:
            adopted += flush(batch)
        return adopted


__all__ = ["GarbageCollector"]
