"""`ChunkAccess`: which chunks a namespace may use, uploads, and proofs of possession.

How deduplication stays safe against garbage collection (`cubby.metadata.collector`): the
``blocks`` row of a chunk is the lock that the uploader, the committer and the collector all
take (committers in share mode). An uploader that finds the row gone deletes the tombstone,
then re-checks that the bytes are still in the block store and writes them again if not.

What crosses namespaces, and so will need care once namespaces are sharded: ``blocks`` and
``chunk_tombstones`` are keyed by hash, not by namespace (they would live with the chunk
index, or be replicated per shard); `chunk_readable` asks about several namespaces at once
(a user's root and shares: one question per shard, answers joined); ``ns_chunks`` rows are
per namespace and stay on its shard. The challenge secret is a server-wide setting.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from cubby.blockstore.base import BlockStore, StagedPut
from cubby.blockstore.directput import stage_direct
from cubby.core.hashing import is_chunk_name
from cubby.metadata import shardchunks, sqlitedriver
from cubby.metadata.engine import Database
from cubby.metadata.possession import Challenges, Checked, ChunkReader, Claim, check_claims
from cubby.metadata.schema import blocks, chunk_tombstones, ns_chunks, settings
from cubby.metadata.shards import ShardRouter


def load_challenge_secret(db: Database) -> bytes:
    """The server's secret for possession nonces, made (once, race-free) on first use."""

    def run(conn: Connection) -> str:
        row = conn.execute(select(settings.c.value).where(settings.c.key == "challenge_secret")).first()
        if row:
            return str(row[0])
        value = secrets.token_hex(32)
        try:
            with conn.begin_nested():
                conn.execute(insert(settings).values(key="challenge_secret", value=value))
        except IntegrityError:
            row = conn.execute(select(settings.c.value).where(settings.c.key == "challenge_secret")).one()
            return str(row[0])
        return value

    return bytes.fromhex(db.write(run))


def make_available(db: Database, conn: Connection, ns_id: int, hashes: list[str], now: float) -> None:
    """Let ``ns_id`` use ``hashes`` (``ns_chunks`` rows, touched now) in ``conn``'s transaction:
    one upsert that adds no reference (a new row has none; a row there keeps its count) and sets
    ``touched_at``, where an INSERT IGNORE then an UPDATE of every row took two statements."""
    db.insert_or_add(
        conn, ns_chunks, [{"ns_id": ns_id, "hash": h, "refs": 0, "touched_at": now} for h in sorted(set(hashes))],
        add="refs", also=("touched_at",),
    )


def _nothing() -> None:
    """The indexing left to do after a store's `put_many`: none."""


class ChunkAccess:
    """Chunk reads and uploads of one metadata database (see the module docstring)."""

    def __init__(self, db: Database, challenges: Challenges, router: ShardRouter | None = None) -> None:
        self.db = db
        self.challenges = challenges
        self.router = router if router is not None and not router.single else None
        """Set on a sharded deployment: ``blocks`` rows on the chunk database, grants on each
        namespace's shard, in separate transactions (`cubby.metadata.shardchunks`); ``db``
        is then the chunk database."""

    def chunk_readable(self, ns_ids: Iterable[int], hashes: Sequence[str]) -> set[str]:
        return set(self.readable_sizes(ns_ids, hashes))

    def readable_sizes(self, ns_ids: Iterable[int], hashes: Sequence[str]) -> dict[str, int]:
        ns_list = sorted(set(ns_ids))
        wanted = sorted({h for h in hashes if is_chunk_name(h)})
        if not ns_list or not wanted:
            return {}
        if self.router is not None:
            return shardchunks.readable_sizes(self.router, ns_list, wanted)

        def run(conn: Connection) -> dict[str, int]:
            out: dict[str, int] = {}
            for i in range(0, len(wanted), 500):
                part = wanted[i : i + 500]
                out.update(
                    (str(r[0]), int(r[1]))
                    for r in conn.execute(
                        select(ns_chunks.c.hash, blocks.c.size)
                        .join(blocks, blocks.c.hash == ns_chunks.c.hash)
                        .where(ns_chunks.c.ns_id.in_(ns_list), ns_chunks.c.hash.in_(part))
                        .distinct()
                    )
                )
            return out

        return self.db.read(run)

    def ingest_chunks(self, ns_id: int, items: Sequence[tuple[str, bytes]], blocks_store: BlockStore) -> int:
        if not items:
            return 0
        unique: dict[str, bytes] = {}
        for name, data in items:
            unique.setdefault(name, data)
        # Verifies every hash, then one barrier. A pack store indexed on this database leaves
        # its index rows to ``record``'s transaction: the upload commits once, not twice.
        staged = blocks_store.stage_many(list(unique.items()), self.db) if isinstance(blocks_store, StagedPut) else None
        if staged is None:
            flags, index = blocks_store.put_many(list(unique.items())), _nothing
        else:
            flags, index = staged
        # Chunks this call wrote into packs that ``index`` records inside ``record``'s own
        # transaction: found there by the re-check below whatever happened meanwhile, so not
        # looked up again (on a store that indexes elsewhere, `put_many`, every chunk is).
        written = set() if staged is None else {name for name, f in zip(unique, flags) if f}

        def again(names: Sequence[str]) -> None:
            blocks_store.put_many([(h, unique[h]) for h in names])

        sizes = {name: len(data) for name, data in unique.items()}
        return self._ingested(ns_id, sizes, sum(1 for f in flags if f), index, written, blocks_store.present, again)

    def direct_put_ticket(self, user_id: int, ns_id: int, pack: str, chunks: Sequence[tuple[str, int]], expires: int) -> str:
        """The seal on a pack handed to a client to put (`cubby.blockstore.directput`): shown
        back when the client says the pack is stored, it proves that this server laid out that
        pack for these chunks, for this user and namespace, until ``expires`` (Unix seconds).
        Without it anyone who learnt a pack's name (a signed read names it) could have chunks
        they never sent indexed at offsets of that pack."""
        listed = hashlib.sha256(",".join(f"{name}:{size}" for name, size in chunks).encode()).hexdigest()
        return self.challenges.seal(f"put:{user_id}:{ns_id}:{pack}:{expires}:{listed}")

    def ingest_direct(self, ns_id: int, pack: str, chunks: Sequence[tuple[str, int]], blocks_store: BlockStore) -> int:
        """`ingest_chunks` for a pack a client put in the bucket itself
        (`cubby.blockstore.directput`): once the bucket holds it (else `PackNotStored`), its
        chunks are indexed and made available to ``ns_id`` in one transaction, as an upload's."""
        staged = stage_direct(blocks_store, pack, chunks, self.db)
        sizes = dict(chunks)
        written = {name for (name, _), f in zip(chunks, staged.new) if f}
        return self._ingested(ns_id, sizes, sum(staged.new), staged.index, written, blocks_store.present, staged.again)

    def _ingested(
        self, ns_id: int, sizes: dict[str, int], new: int, index: Callable[[], None], written: set[str],
        present: Callable[[Sequence[str]], set[str]], again: Callable[[Sequence[str]], None],
    ) -> int:
        """The rows of an upload whose chunks are durable: ``index`` records their places
        (first, in the transaction), then each chunk's ``blocks`` row, and the grant to
        ``ns_id``. ``written``: chunks this upload stored and ``index`` records; any other
        not in ``blocks`` may have been collected meanwhile (``present`` says), and is
        stored ``again``. ``new``: what the caller is told was new."""
        names = sorted(sizes)
        now = time.time()

        def record(conn: Connection) -> None:
            index()  # first: the chunks are durable, and `present` below finds them
            d = sqlitedriver if self.db.is_sqlite else None  # SQLite: the same statements, to the driver
            found: set[str] = set()
            for i in range(0, len(names), 500):
                part = names[i : i + 500]
                if d is not None:
                    found.update(r[0] for r in d.chunk_rows(conn, "blocks", ("hash",), part))
                    continue
                q = select(blocks.c.hash).where(blocks.c.hash.in_(part)).with_for_update()
                found.update(r[0] for r in conn.execute(q))
            fresh = [h for h in names if h not in found]
            if fresh:
                # Waits for a collector holding these tombstones; after that, it cannot take
                # the bytes any more (it re-checks the tombstone under its lock).
                for i in range(0, len(fresh), 500):
                    part = fresh[i : i + 500]
                    if d is not None:
                        d.execute(conn, d.in_sql(d.FORGET_TOMBSTONES, "hash", len(part)), part)
                    else:
                        conn.execute(delete(chunk_tombstones).where(chunk_tombstones.c.hash.in_(part)))
            # The collector may have removed these bytes between the store's write and this
            # lock; only then is a chunk stored (and so verified) a second time.
            unsure = [h for h in fresh if h not in written]
            stored = present(unsure) if unsure else set()
            missing = [h for h in unsure if h not in stored]
            if missing:
                again(missing)
            self.db.insert_ignore(
                conn, blocks, [{"hash": h, "size": sizes[h], "touched_at": now} for h in fresh]
            )
            if found and d is not None:
                touched = sorted(found)
                for i in range(0, len(touched), 500):
                    part = touched[i : i + 500]
                    d.execute(conn, d.in_sql(d.TOUCH_CHUNKS, "hash", len(part)), (now, *part))
            elif found:
                conn.execute(
                    update(blocks).where(blocks.c.hash == bindparam("h")).values(touched_at=now),
                    [{"h": h} for h in sorted(found)],
                )

        if self.router is not None:  # the chunk database's rows committed first, then the grants
            self.db.write(record)
            shardchunks.make_available_on(self.router, ns_id, names, now)
            return new

        def run(conn: Connection) -> None:
            record(conn)
            make_available(self.db, conn, ns_id, names, now)

        self.db.write(run)
        return new

    def challenge(self, user_id: int, ns_id: int, chunk_hash: str, size: int, *, at: float | None = None) -> str:
        return self.challenges.nonce(user_id, ns_id, chunk_hash, size, at=at)

    def proof_key(self, user_id: int, ns_id: int) -> dict[str, Any]:
        """This hour's proof key of (user, namespace), for the account answer: ``window``,
        ``key`` (hex) and ``valid_for`` (seconds). See `cubby.metadata.possession`."""
        window = self.challenges.window()
        return {
            "window": window,
            "key": self.challenges.key(user_id, ns_id, window).hex(),
            "valid_for": int(self.challenges.key_valid_for(window)),
        }

    def accept_proofs(
        self, user_id: int, ns_id: int, claims: Sequence[Claim], blocks_store: ChunkReader,
        *, within: Iterable[int] | None = None,
    ) -> Checked:
        """Check claims (`cubby.metadata.possession.check_claims`) and make the proven chunks
        available to ``ns_id``. ``within``: dedup only against chunks these namespaces hold
        (the caller's own, for ``dedup_scope = user``); None means any chunk the server holds."""
        eligible = None if within is None else self.chunk_readable(within, [c.hash for c in claims]).__contains__
        checked = check_claims(self.challenges, user_id, ns_id, claims, blocks_store, eligible)
        accepted = checked.proven
        if not accepted:
            return checked
        now = time.time()
        if self.router is not None:
            still = sorted(shardchunks.touch_chunks(self.db, accepted, now))
            shardchunks.make_available_on(self.router, ns_id, still, now)
            checked.rejected = sorted([*checked.rejected, *(h for h in accepted if h not in still)])
            checked.proven = still
            return checked

        def run(conn: Connection) -> list[str]:
            q = select(blocks.c.hash).where(blocks.c.hash.in_(accepted))
            if not self.db.is_sqlite:
                q = q.with_for_update()
            still = sorted(r[0] for r in conn.execute(q))
            if still:
                conn.execute(
                    update(blocks).where(blocks.c.hash.in_(still)).values(touched_at=now)
                )
                make_available(self.db, conn, ns_id, still, now)
            return still

        still = self.db.write(run)
        checked.rejected = sorted([*checked.rejected, *(h for h in accepted if h not in still)])
        checked.proven = still
        return checked


__all__ = ["ChunkAccess", "load_challenge_secret", "make_available"]
