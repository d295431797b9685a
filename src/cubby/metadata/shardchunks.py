"""Chunks across databases: the chunk database (``blocks``, keyed by hash) and the shards'
``ns_chunks`` (keyed by namespace), asked in separate statements, never joined.

On a single database none of this runs: a commit reads ``blocks`` and ``ns_chunks`` in one
statement of its own transaction and holds the ``blocks`` rows in share mode until it commits
(`cubby.metadata.writes`), and the collector locks the same rows (`cubby.metadata.collector`).
A shard's transaction cannot lock rows of another database, so a sharded deployment keeps
collection safe with *touches* instead:

1. Whatever is about to add a reference to a chunk, or a grant to use one (a commit, an
   upload, an accepted proof), first sets the chunk's ``blocks.touched_at`` to now on the chunk
   database, in a transaction of its own that commits before its shard transaction starts
   writing (`touch_chunks`), unless it was touched less than `TOUCH_INTERVAL` ago (then the
   statement writes nothing, and the transaction needs no flush to disk). A chunk without a
   ``blocks`` row is not stored: the commit asks for it to be uploaded, as on one database.
2. The collector takes a chunk only in a chunk-database transaction that locks its ``blocks``
   row with ``touched_at`` older than the grace period, then reads every shard's
   ``ns_chunks`` for references (fresh statements: each sees what committed before it), and
   deletes the row and writes the tombstone in that same locked transaction.

Why no reference can land on a collected chunk: take a commit C that touches chunk h at time
t and then commits its reference on its shard, and a collector G that tombstones h. G's lock
on h's row and C's touch are ordered by the chunk database. If C's touch came first, G's
locked read sees ``touched_at = t``, which is within the grace period while C can still be
running, so G leaves h alone. If G's lock came first, C's touch waits for G's commit and then
finds no row: h is not stored, C does not reference it. A touch skipped because h was touched
at t0 within `TOUCH_INTERVAL` of C's clock is the first case with t = t0: G takes h only with
a cutoff above t0, so at least grace - `TOUCH_INTERVAL` after C began. The assumptions: a
shard transaction commits within the grace period less `TOUCH_INTERVAL` (the grace is 24 hours
by default and `cubby gc` refuses less than twice `TOUCH_INTERVAL` on a sharded deployment;
transactions are killed by statement timeouts long before), and the processes' clocks agree
to well within it. Existing references need no touch: G reads them on their shard; a
reference that disappears while G reads (a delete) leaves h collectable, which is right.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from cubby.metadata.engine import Database
from cubby.metadata.nstxn import NamespaceTxn
from cubby.metadata.schema import blocks, ns_chunks
from cubby.metadata.shards import ShardRouter

BATCH = 500
TOUCH_INTERVAL = 60.0
"""Seconds during which a chunk's touch stands for later touches (module docstring): a
popular chunk is written once a minute, not by every commit that names it."""


_STORED = select(blocks.c.hash, blocks.c.size, blocks.c.touched_at).where(
    blocks.c.hash.in_(bindparam("hashes", expanding=True))
)
_TOUCH = (
    update(blocks)
    .where(blocks.c.hash.in_(bindparam("hashes", expanding=True)), blocks.c.touched_at < bindparam("fresh"))
    .values(touched_at=bindparam("now"))
)
_HELD = (
    select(ns_chunks.c.hash)
    .where(ns_chunks.c.ns_id.in_(bindparam("nss", expanding=True)), ns_chunks.c.hash.in_(bindparam("hashes", expanding=True)))
    .distinct()
)
_REFERENCED = select(ns_chunks.c.hash).where(
    ns_chunks.c.hash.in_(bindparam("hashes", expanding=True)), ns_chunks.c.refs > 0
)


def touch_chunks(chunk_db: Database, hashes: Sequence[str], now: float | None = None) -> dict[str, int]:
    """Set ``touched_at`` of the stored chunks among ``hashes`` to now, unless they were
    touched within `TOUCH_INTERVAL`, in one committed chunk-database transaction, and answer
    their sizes (a chunk missing from the answer is not stored). Step 1 of the module
    docstring: call it before the shard transaction that adds references or grants, never
    after. The common case, chunks touched within the interval, is one read."""
    when = time.time() if now is None else now
    wanted = sorted(set(hashes))
    if not wanted:
        return {}

    def run(conn: Connection) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for i in range(0, len(wanted), BATCH):
            part = wanted[i : i + BATCH]
            stale = []
            for h, size, touched in conn.execute(_STORED, {"hashes": part}):
                sizes[str(h)] = int(size)
                if float(touched) < when - TOUCH_INTERVAL:
                    stale.append(str(h))
            if stale:
                # Waits for a collector holding these rows; read again after, as it may have
                # taken them (READ COMMITTED: the second read sees its commit).
                conn.execute(_TOUCH, {"hashes": stale, "fresh": when - TOUCH_INTERVAL, "now": when})
                still = {str(r[0]) for r in conn.execute(_STORED, {"hashes": stale})}
                for h in stale:
                    if h not in still:
                        del sizes[h]
        return sizes

    return chunk_db.write(run)


def _held_in(conn: Connection, nss: Sequence[int], hashes: Sequence[str]) -> set[str]:
    """Which of ``hashes`` one of ``nss`` holds (an ``ns_chunks`` row, reference or grant)."""
    out: set[str] = set()
    for i in range(0, len(hashes), BATCH):
        out.update(str(r[0]) for r in conn.execute(_HELD, {"nss": list(nss), "hashes": list(hashes[i : i + BATCH])}))
    return out


def by_shard(router: ShardRouter, ns_ids: Iterable[int]) -> dict[str, list[int]]:
    """``ns_ids`` grouped by the shard that holds each (unknown namespaces are left out)."""
    out: dict[str, list[int]] = {}
    for ns in sorted(set(ns_ids)):
        try:
            out.setdefault(router.placement(ns).shard, []).append(ns)
        except Exception:  # a namespace with no placement holds nothing
            continue
    return out


def held_on_shards(
    router: ShardRouter, ns_ids: Iterable[int], hashes: Sequence[str], *, here: tuple[Database, Connection] | None = None
) -> set[str]:
    """Which of ``hashes`` any of ``ns_ids`` holds: one ``ns_chunks`` query per shard involved,
    answers unioned (never a join across databases). ``here``: a shard's database and the
    transaction already open on it, used for that shard's namespaces."""
    out: set[str] = set()
    for shard, nss in by_shard(router, ns_ids).items():
        db = router.shard_db(shard)
        if here is not None and db is here[0]:
            out |= _held_in(here[1], nss, hashes)
        else:
            out |= db.read(lambda c, nss=nss: _held_in(c, nss, hashes))  # type: ignore[misc]
    return out


def chunk_readable(router: ShardRouter, ns_ids: Iterable[int], hashes: Sequence[str]) -> set[str]:
    """`cubby.metadata.chunks.ChunkAccess.chunk_readable` across shards: held by one of
    ``ns_ids`` (each shard asked) and stored (the chunk database asked)."""
    return set(readable_sizes(router, ns_ids, hashes))


def readable_sizes(router: ShardRouter, ns_ids: Iterable[int], hashes: Sequence[str]) -> dict[str, int]:
    """`chunk_readable` with each chunk's plaintext size (the chunk database's ``blocks`` row)."""
    held = sorted(held_on_shards(router, ns_ids, hashes))
    if not held:
        return {}

    def stored(conn: Connection) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in range(0, len(held), BATCH):
            out.update(
                (str(r[0]), int(r[1]))
                for r in conn.execute(select(blocks.c.hash, blocks.c.size).where(blocks.c.hash.in_(held[i : i + BATCH])))
            )
        return out

    return router.chunks.read(stored)


class SplitHeld:
    """The chunk check of a commit on a shard of a sharded deployment (`FileWrites`'s ``held``):
    the chunk database touched and asked for sizes first (`touch_chunks`), then the shard's
    ``ns_chunks`` in the commit's own transaction, and the other shards' for namespaces the
    caller reads elsewhere."""

    def __init__(self, router: ShardRouter, db: Database) -> None:
        self.router = router
        self.db = db

    def __call__(self, tx: NamespaceTxn, hashes: Sequence[str]) -> Iterator[tuple[str, int, bool]]:
        sizes = touch_chunks(self.router.chunks, hashes)
        stored = sorted(sizes)
        held = held_on_shards(self.router, [tx.ns_id, *tx.readable], stored, here=(self.db, tx.conn)) if stored else set()
        for h in stored:
            yield h, sizes[h], h in held


def make_available_on(router: ShardRouter, ns_id: int, hashes: list[str], now: float) -> None:
    """Grant ``ns_id`` the use of ``hashes`` on its shard (after `touch_chunks` committed)."""
    from cubby.metadata.chunks import make_available

    if not hashes:
        return
    db = router.db_for(ns_id)
    db.write(lambda c: make_available(db, c, ns_id, hashes, now))


def unreferenced(router: ShardRouter, hashes: Sequence[str]) -> set[str]:
    """Which of ``hashes`` no namespace of any shard references (``refs > 0``): step 2 of the
    module docstring, one fresh read per shard."""
    wanted = list(hashes)
    referenced: set[str] = set()

    def refs(conn: Connection) -> set[str]:
        return {str(r[0]) for r in conn.execute(_REFERENCED, {"hashes": wanted})}

    for db in {id(d): d for d in router.shards.values()}.values():
        referenced |= db.read(refs)
    return set(wanted) - referenced


__all__ = [
    "TOUCH_INTERVAL", "SplitHeld", "by_shard", "chunk_readable", "held_on_shards", "make_available_on", "readable_sizes", "touch_chunks", "unreferenced",
]
