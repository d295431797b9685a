"""`PackBlockStore`: chunks appended to large immutable pack objects, found through an index.

One object per 4 KiB chunk is the main cost of small files (a file, two fsyncs and a folder
entry each, or a PUT each on S3); a pack holds thousands of chunks and is written with one
durable `ObjectStore.put`. Layers, as in restic: the objects (`cubby.blockstore.objects`: a
folder or a bucket), the pack format (`cubby.blockstore.packfile`), the index
(`cubby.blockstore.index`: hash -> pack, offset, lengths, in the metadata database).

- **Writing.** `put_many` verifies every chunk against its name, compresses the new ones (on
  the executor when one is given), cuts them into packs of at most `TARGET_PACK` bytes,
  puts each pack (durable when `put` returns) and only then records the packs and their chunks
  in the index, in one transaction. On an object store that takes an object in parts
  (`StreamingPut`: a folder, S3), each chunk goes to its pack as soon as it is verified (a
  folder writes it then, so that the writing overlaps the verifying; S3 sends the pack's
  parts, unjoined, once they are all there); a bad chunk then deletes the batch's packs
  before anything was indexed. A batch always ends by writing the pack it filled, so
  nothing is acknowledged before its pack is durable; a small batch makes a small pack, which
  `compact` later merges with others.
- **Why 16 MiB.** It is restic's default and the size of the client's upload window, so that
  one upload batch is one pack and one PUT. Large enough that a PUT's fixed cost is negligible
  and a store of terabytes holds tens of thousands of objects, not billions; small enough that
  rewriting a pack to reclaim its dead chunks costs little, and a pack is held in memory once.
- **Reading** a chunk is one index lookup and one ranged read (`pread`, or a ranged GET).
  `read_many` and `get_many` look many up at once and read neighbouring chunks as one extent, several
  extents at a time (`cubby.blockstore.extents`): a download is a few large concurrent
  ranged GETs, not one small GET per chunk.
- **Many processes.** Every process that opens the same object store and index serves every
  chunk: the index, not the process, knows where a chunk is. Pack ids are random, so two
  writers never collide; when both store one chunk, the first location recorded wins and the
  other copy is dead bytes.
- **Compaction** (`compact`) rewrites packs whose dead share passes `threshold` and merges
  small packs: live chunks are copied into a new pack, the index is switched in one
  transaction (each chunk only if it is still where it was read), and the old packs are
  retired; their objects are deleted by a later `compact` once `grace` seconds have passed,
  so that a read that looked up the old location just before the switch still finds it.
- **Mending from uploads.** A chunk that a process could not read where the index puts it
  (its pack missing, or bytes that do not match its name: `unreadable`) is recorded with that
  pack on the index (`ChunkIndex.mark_unreadable`), where every process sees it. Its next
  proof of possession fails (the server cannot read its copy), so the client uploads it; the
  upload stores it again, although the index already names a place for it, and moves its
  location to the new pack (`ChunkIndex.switch`, only if it is still in the bad pack, which
  drops the finding), whichever process the upload reaches: behind a load balancer the prove
  and the upload are often two. Every file with that chunk reads whole again: reads go by
  hash. What nobody saw failing (a chunk nobody read) `cubby admin check` finds.
- **Existing stores.** ``legacy`` is a store written by an earlier release (one file per
  chunk, `cubby.blockstore.local`); chunks not in the index are read from it, and
  `migrate_legacy` moves them into packs.
"""

from __future__ import annotations

import functools
import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from cubby.blockstore.base import BlockStore, Plain
from cubby.blockstore.direct import DirectPlan, plan_direct_reads
from cubby.blockstore.directput import (
    DirectPut,
    StagedDirect,
    direct_layout,
    pack_is_stored,
    plan_direct_put,
)
from cubby.blockstore.extents import Extent, plan_extents
from cubby.blockstore.index import USAGE_PAGE, ChunkIndex, NewPack, PackUsage, usage_pages
from cubby.blockstore.objects import ObjectMissing, ObjectStore, StreamingPut
from cubby.blockstore.packfile import (
    Location,
    build_pack,
    pack_id_of,
    pack_object_name,
    pack_parts,
    pack_size,
    read_trailer,
)
from cubby.core.batched import batched
from cubby.core.chunking import MIN_DIRECT
from cubby.core.compression import (
    RAW,
    Codec,
    CorruptChunk,
    Stored,
    iter_verify_and_encode,
    stored_len,
    verify_and_encode,
)
from cubby.core.hashing import Sha256State, check_chunk_name, sha256_hex
from cubby.errors import BadRequest, NotFound

log = logging.getLogger("cubby.blockstore")

TARGET_PACK = 16 * 1024 * 1024
SMALL_SHARE = 4
"""Packs below a quarter of the target size are merged by `compact` whatever their dead share."""
REWRITE_PACKS = 500
"""Most packs one rewrite takes in, however little of them is alive: a batch is otherwise cut
at `target_size` live bytes, which packs that are almost wholly dead would take thousands of to
reach. Its chunks are looked up in one query by pack (`ChunkIndex.locations_in`), whose IN
list stays within the 999 parameters older SQLite allows a statement."""
MARK_AGAIN = 60.0
"""Seconds during which a process does not record again an unreadable chunk it recorded
(`PackBlockStore.unreadable`): every download of a file with a lost chunk reads it again."""


@dataclass
class CompactStats:
    packs_rewritten: int = 0
    chunks_moved: int = 0
    bytes_reclaimed: int = 0
    packs_deleted: int = 0
    orphans_deleted: int = 0
    packs_missing: int = 0
    """Packs to rewrite whose object was not there (`cubby admin check` says what is lost)."""


@dataclass
class MigrateStats:
    chunks: int = 0
    bytes: int = 0
    removed: int = 0


def new_pack_id() -> str:
    """A pack id: its creation time (so an unrecorded pack's age is known from its name) and
    96 random bits (so that writers in different processes never collide)."""
    return f"{int(time.time()):010x}{secrets.token_hex(12)}"


def pack_age(pack: str, now: float) -> float:
    try:
        return now - int(pack[:10], 16)
    except ValueError:
        return 0.0


class PackBlockStore:
    def __init__(
        self,
        objects: ObjectStore,
        index: ChunkIndex,
        *,
        codec: Codec | None = None,
        verify_reads: bool = True,
        executor: Executor | None = None,
        target_size: int = TARGET_PACK,
        legacy: BlockStore | None = None,
        read_threads: int = 8,
        reads_ahead: int = 4,
    ) -> None:
        self.objects = objects
        self.index = index
        self.codec = codec or Codec()
        self.verify_reads = verify_reads
        self.executor = executor
        self.target_size = target_size
        self.legacy = legacy
        self._compacting = threading.Lock()
        self.read_threads = read_threads
        self.reads_ahead = reads_ahead
        self._pool_lock = threading.Lock()
        self._readers: ThreadPoolExecutor | None = None
        self._marked: dict[str, tuple[str, float]] = {}
        """Chunk -> (pack, monotonic time) of the findings this process recorded lately
        (`unreadable`), so that a lost chunk read again and again is recorded once a while."""
        self._marked_lock = threading.Lock()

    # -- writing ------------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> bool:
        return self.put_many([(name, data)])[0]

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> list[bool]:
        new, made, mend = self._store_unindexed(list(items))
        self._record(made, mend)
        return new

    def stage_many(
        self, items: Sequence[tuple[str, bytes]], within: object
    ) -> tuple[list[bool], Callable[[], None]] | None:
        """`put_many` with the index's transaction left to the caller (`cubby.blockstore.base.StagedPut`):
        the packs are written and durable, and the returned function records them, in the
        caller's transaction on ``within`` when the index writes there (else None: nothing done)."""
        if not self.index.writes_to(within):
            return None
        new, made, mend = self._store_unindexed(list(items))
        return new, functools.partial(self._record, made, mend)

    def _store_unindexed(
        self, items: list[tuple[str, bytes]]
    ) -> tuple[list[bool], list[NewPack], dict[str, str]]:
        """Which of ``items`` are new, the new ones (and those to mend) written into durable
        packs, not yet indexed, and the chunks to mend with the pack each could not be read from.
        A mended chunk is not new to the caller: the metadata already holds it."""
        for name, _ in items:
            check_chunk_name(name)
        known = self.present(name for name, _ in items)
        mend = self._to_mend(known)
        seen: set[str] = set()
        new: list[bool] = []
        store: list[bool] = []
        for name, _ in items:
            new.append(name not in known and name not in seen)
            store.append(new[-1] or (name in mend and name not in seen))
            seen.add(name)
        jobs = [(name, data, stored) for (name, data), stored in zip(items, store)]
        if isinstance(self.objects, StreamingPut):
            return new, self._stream_packs(self.objects, jobs), mend
        # Every chunk is verified before anything is written: a batch with one bad chunk
        # stores nothing.
        blobs = verify_and_encode(self.codec, jobs, self.executor)
        fresh = [(name, blob, len(data)) for (name, data), blob in zip(items, blobs) if blob is not None]
        return new, self._put_packs(fresh), mend

    def _to_mend(self, known: set[str]) -> dict[str, str]:
        """Those of ``known`` (chunks the index places) found unreadable by any process. An
        upload carries held chunks only when something went wrong (a proof the server could
        not check) or two clients raced, so the usual upload asks nothing here."""
        return self.index.unreadable(sorted(known)) if known else {}

    def unreadable(self, found: dict[str, str]) -> None:
        """Record that each chunk of ``found`` could not be read from the pack it maps to (see
        "Mending"), unless this process recorded the same within `MARK_AGAIN` seconds. Not
        recorded when the index cannot be written: that is logged, not raised, since the read
        has failed already and its own error says more."""
        now = time.monotonic()
        with self._marked_lock:
            fresh = {h: p for h, p in found.items() if not self._marked_lately(h, p, now)}
            if len(self._marked) + len(fresh) > 100_000:
                self._marked.clear()
            self._marked.update((h, (p, now)) for h, p in fresh.items())
        if not fresh:
            return
        try:
            self.index.mark_unreadable(fresh)
        except Exception:  # any failure of the index's database: the read's error goes on
            with self._marked_lock:
                for h in fresh:
                    self._marked.pop(h, None)
            log.warning("could not record chunks found unreadable", exc_info=True, extra={"chunks": len(fresh)})

    def _marked_lately(self, name: str, pack: str, now: float) -> bool:
        """Whether this process recorded ``name`` unreadable in ``pack`` within `MARK_AGAIN`."""
        seen = self._marked.get(name)
        return seen is not None and seen[0] == pack and now - seen[1] <= MARK_AGAIN

    def _record(self, made: list[NewPack], mend: dict[str, str]) -> None:
        """Index ``made`` and move each chunk of ``mend`` that it holds out of its bad pack."""
        self.index.add_packs(made)
        if not mend:
            return
        moved = 0
        for pack in made:
            entries = [(h, loc) for h, loc in pack.entries if h in mend]
            if entries:
                moved += self.index.switch(
                    NewPack(pack.pack, pack.size, pack.payload, entries), {h: mend[h] for h, _ in entries}, []
                )
        with self._marked_lock:
            for h in mend:
                self._marked.pop(h, None)
        if moved:  # else each had been moved off its bad pack already (mended by another upload)
            log.warning("chunks mended from an upload", extra={"chunks": moved, "from_packs": sorted(set(mend.values()))})

    def _stream_packs(self, objects: StreamingPut, jobs: list[tuple[str, bytes, bool]]) -> list[NewPack]:
        """Verify and encode ``jobs`` and write the new chunks into packs as they come out
        (`iter_verify_and_encode`, `StreamingPut.put_parts`): the pack's write, and the disk's,
        overlap the verifying of the chunks after them, and no pack is joined into one buffer.
        Every chunk of the batch is verified before any pack is indexed; a bad one stops the
        pack being written (nothing is stored) and deletes the packs already written for the
        batch, which nothing could have found (they are not indexed): as with `write_packs`, a
        batch with one bad chunk leaves nothing behind. Returns the packs, durable, unindexed."""
        states: dict[str, Sha256State] = {}  # each chunk's verifying hasher (`pack_parts`' ``known``)
        encoded = iter_verify_and_encode(self.codec, jobs, self.executor, states)
        fresh = (
            (name, blob, len(data)) for (name, data, _), blob in zip(jobs, encoded) if blob is not None
        )
        made: list[NewPack] = []
        try:
            for first in fresh:
                made.append(self._stream_pack(objects, itertools.chain((first,), fresh), states))
        except BaseException:
            for done in made:
                self.objects.delete(pack_object_name(done.pack))
            raise
        return made

    def _stream_pack(
        self, objects: StreamingPut, blobs: Iterator[tuple[str, Stored, int]], states: Mapping[str, Sha256State]
    ) -> NewPack:
        """Write one pack from ``blobs``, taking them until it reaches `target_size` (a pack
        ends after the chunk that fills it, as in `_put_packs`) or they end. ``states``: the
        hashers that verified the chunks, handed to the store for the raw ones' payloads
        (`pack_parts`), so that a store signing the body in chunks hashes them no more."""
        pack = new_pack_id()
        entries: list[tuple[str, Location]] = []

        def taken() -> Iterator[tuple[str, Stored, int]]:
            size = 0
            for blob in blobs:
                yield blob
                size += stored_len(blob[1])
                if size >= self.target_size:
                    return

        digests: dict[int, Sha256State] = {}
        parts = pack_parts(pack, taken(), entries, known=states, digests=digests)
        objects.put_parts(pack_object_name(pack), parts, digests)
        return NewPack(pack, pack_size(entries), sum(loc.stored_len for _, loc in entries), entries)

    def direct_put(self, chunks: Sequence[tuple[str, int]]) -> DirectPut | None:
        """`HandsOutPuts.direct_put`: a new pack id, laid out for ``chunks`` and signed
        (`cubby.blockstore.directput`); None unless the object store hands out PUTs."""
        for name, size in chunks:
            check_chunk_name(name)
            if size < MIN_DIRECT:
                raise BadRequest(f"chunk {name} is under {MIN_DIRECT} bytes: upload it through the blocks role")
        return plan_direct_put(self.objects, new_pack_id(), chunks)

    def stage_direct_put(self, pack: str, chunks: Sequence[tuple[str, int]], within: object) -> StagedDirect:
        """`HandsOutPuts.stage_direct_put`. The pack's entries for chunks the index places
        already are left out of it (their bytes in the pack are dead from the start, as a
        compaction would leave them); a chunk indexed by another upload in the meantime
        keeps its place (the index ignores a second row for it).

        ``again``: a chunk left out this way, whose bytes the collector took before the
        upload's rows were written, is read back from the client's pack and stored in a pack
        of the server's own (`put_many`, which verifies it against its name), as an upload stores
        such a chunk again. Not indexed where it lies: the pack's row is written once, with
        the payload of the chunks it placed, and a second placement would leave that payload
        short (its dead share read low, and compaction late); and where the index is another
        database's, the pack's row is committed before ``again`` runs, so a collector may
        have retired the pack, as wholly dead, in between."""
        layout = direct_layout(pack, chunks)
        pack_is_stored(self.objects, layout)
        known = self.present(name for name, _ in chunks)
        where = dict(layout.entries)

        new = [name not in known for name, _ in chunks]
        placed = [(name, where[name]) for (name, _), is_new in zip(chunks, new) if is_new]
        fresh = NewPack(pack, layout.size, sum(loc.stored_len for _, loc in placed), placed)

        def again(names: Sequence[str]) -> None:
            name = pack_object_name(pack)
            copies = [(h, self.codec.decode(self.objects.get(name, where[h].pos, where[h].stored_len))) for h in names]
            self.put_many(copies)

        if self.index.writes_to(within):
            return StagedDirect(new, functools.partial(self.index.add_packs, [fresh]), again)
        self.index.add_packs([fresh])
        return StagedDirect(new, lambda: None, again)

    def write_packs(self, blobs: list[tuple[str, Stored, int]]) -> list[NewPack]:
        """Put ``blobs`` (name, stored bytes, plain length) into new packs, each durable, then
        record them all in the index in one transaction."""
        made = self._put_packs(blobs)
        self.index.add_packs(made)
        return made

    def _put_packs(self, blobs: list[tuple[str, Stored, int]]) -> list[NewPack]:
        """Put ``blobs`` into new packs of `target_size` bytes or a little more (one chunk
        over), so that one 16 MiB upload window is one pack; not yet indexed."""
        made: list[NewPack] = []
        group: list[tuple[str, Stored, int]] = []
        size = 0
        for blob in blobs:
            if group and size >= self.target_size:  # full: a pack ends after the chunk that fills it
                made.append(self._put_pack(group))
                group, size = [], 0
            group.append(blob)
            size += stored_len(blob[1])
        if group:
            made.append(self._put_pack(group))
        return made

    def _put_pack(self, group: list[tuple[str, Stored, int]]) -> NewPack:
        """One pack of ``group``, durable: given to the store in parts when it takes them
        (`StreamingPut`), so that the chunks are not joined into one buffer first."""
        pack = new_pack_id()
        payload = sum(stored_len(b) for _, b, _ in group)
        if isinstance(self.objects, StreamingPut):
            entries: list[tuple[str, Location]] = []
            self.objects.put_parts(pack_object_name(pack), list(pack_parts(pack, group, entries)))
            return NewPack(pack, pack_size(entries), payload, entries)
        data, entries = build_pack(pack, group)
        self.objects.put(pack_object_name(pack), data)
        return NewPack(pack, len(data), payload, entries)

    # -- reading ------------------------------------------------------------------------------
    def get(self, name: str) -> bytes:
        check_chunk_name(name)
        for attempt in range(2):
            loc = self.index.lookup([name]).get(name)
            if loc is None:
                if self.legacy is not None:
                    return self.legacy.get(name)
                raise NotFound(f"chunk {name} is not stored")
            try:
                blob = self.objects.get(pack_object_name(loc.pack), loc.pos, loc.stored_len)
            except ObjectMissing:
                if attempt == 0:
                    continue  # compacted away since the lookup (past its grace): look again
                # Every chunk placed in the lost pack, not just this one: a proof check that
                # meets it refuses the whole request, and all of them come back as uploads.
                # Looked up once a while, not at every read of a chunk of it (each download
                # of its files, each retry).
                if not self._marked_lately(name, loc.pack, time.monotonic()):
                    self.unreadable(dict.fromkeys([name, *self.index.locations_in([loc.pack])], loc.pack))
                raise CorruptChunk(f"chunk {name}: its pack {loc.pack} is missing") from None
            return self._decode(name, loc, blob, self.verify_reads)
        raise AssertionError("unreachable")

    def _decode(self, name: str, loc: Location, blob: bytes | memoryview, verify: bool) -> bytes:
        try:
            data = self.codec.decode(blob)
        except CorruptChunk:
            self.unreadable({name: loc.pack})
            raise
        if len(data) != loc.plain_len or (verify and sha256_hex(data) != name):
            self.unreadable({name: loc.pack})
            raise CorruptChunk(f"stored chunk {name} does not match its name; it is not served")
        return data

    def get_many(self, names: Sequence[str]) -> dict[str, bytes]:
        """One index lookup for all of ``names``, then the stored ones read in pack order as
        `read_many` reads them (neighbouring chunks as one extent, several extents at once);
        absent ones are left out. A pack compacted away between the lookup and the read is
        looked up again, as in `get`."""
        for name in names:
            check_chunk_name(name)
        wanted = list(dict.fromkeys(names))
        located = self.index.lookup(wanted)
        order = sorted(located, key=lambda n: (located[n].pack, located[n].pos))
        planned = self._read_planned(plan_extents([(n, located[n]) for n in order]), skip_missing=True)
        found = {n: bytes(d) for n, d in planned}  # bytes already (no view without share): not copied
        if self.legacy is not None:
            rest = [n for n in wanted if n not in located]
            if rest:
                found.update(self.legacy.get_many(rest))
        return found

    def read_many(self, names: Sequence[str], *, verify: bool = True) -> Iterator[tuple[str, Plain]]:
        """One index lookup for all of ``names``; neighbouring chunks of a pack are read as one
        extent (`cubby.blockstore.extents`), ``reads_ahead`` extents at once on the store's
        read threads, each decoded and verified on the thread that read it; the chunks come
        in the order asked. Memory: at most ``reads_ahead`` extents of `extents.SPAN` bytes
        (and their plaintext) per call. ``verify=False``: see `BlockStore.read_many`; an
        uncompressed chunk then comes as a view into its extent, not a copy (what the fetch
        route sends on: the copy was a tenth of the server's CPU on a download)."""
        names = list(names)
        for name in names:
            check_chunk_name(name)
        located = self.index.lookup(names)
        yield from self._read_planned(
            plan_extents([(n, located.get(n)) for n in names]), verify=verify and self.verify_reads, share=not verify
        )

    def direct_reads(self, names: Sequence[str]) -> DirectPlan | None:
        """`HandsOutReads.direct_reads`: one index lookup, then the reads
        (`cubby.blockstore.direct.plan_direct_reads`); a legacy store's chunks are fetched."""
        names = list(dict.fromkeys(names))
        for name in names:
            check_chunk_name(name)
        return plan_direct_reads(self.objects, names, self.index.lookup(names))

    def _read_planned(
        self, plan: list[Extent], *, skip_missing: bool = False, verify: bool | None = None, share: bool = False
    ) -> Iterator[tuple[str, Plain]]:
        """The chunks of ``plan``; ``share``: an unverified raw chunk may be a view of its extent."""
        check = self.verify_reads if verify is None else verify
        share = share and not check
        if len(plan) == 1:  # one read: no thread to hand it to
            yield from self._read_extent(plan[0], skip_missing, check, share)
            return
        pool = self._read_pool()
        todo = iter(plan)
        pending = deque(
            pool.submit(self._read_extent, e, skip_missing, check, share) for e in itertools.islice(todo, self.reads_ahead)
        )
        try:
            while pending:
                chunks = pending.popleft().result()
                following = next(todo, None)
                if following is not None:
                    pending.append(pool.submit(self._read_extent, following, skip_missing, check, share))
                yield from chunks
        finally:
            for fut in pending:
                fut.cancel()

    def _read_extent(
        self, extent: Extent, skip_missing: bool = False, verify: bool = True, share: bool = False
    ) -> list[tuple[str, Plain]]:
        """The chunks of one extent, each decoded (and verified when ``verify``). Each chunk's
        payload is copied once, into its plaintext; with ``share`` (and not ``verify``) an
        uncompressed one is not copied at all but handed out as a read-only view of the
        extent's bytes, which stay alive as long as a view of them does."""
        if extent.pack is not None:
            try:
                raw = self.objects.get(pack_object_name(extent.pack), extent.start, extent.end - extent.start)
            except ObjectMissing:
                pass  # compacted away since the lookup: each chunk is looked up again, below
            else:
                out: list[tuple[str, Plain]] = []
                view = memoryview(raw).toreadonly()
                for name, loc in extent.members:
                    assert loc is not None
                    at = loc.pos - extent.start
                    blob = view[at : at + loc.stored_len]
                    if share and not verify and len(blob) == loc.plain_len + 1 and blob[0] == RAW:
                        out.append((name, blob[1:]))
                    else:
                        out.append((name, self._decode(name, loc, blob, verify)))
                return out
        # Not indexed (the legacy store's, or NotFound), or its pack is gone: one by one.
        found: list[tuple[str, Plain]] = []
        for name, _ in extent.members:
            try:
                found.append((name, self.get(name)))
            except NotFound:
                if not skip_missing:
                    raise
        return found

    def _read_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._readers is None:
                self._readers = ThreadPoolExecutor(self.read_threads, thread_name_prefix="cubby-pack-reads")
            return self._readers

    def close(self) -> None:
        """Stop the read threads and close the object store."""
        with self._pool_lock:
            readers, self._readers = self._readers, None
        if readers is not None:
            readers.shutdown(wait=True)
        self.objects.close()

    def has(self, name: str) -> bool:
        return bool(self.present([name]))

    def present(self, names: Iterable[str]) -> set[str]:
        wanted = list(names)
        found = self.index.present(wanted)
        if self.legacy is not None:
            found |= self.legacy.present(n for n in wanted if n not in found)
        return found

    def delete(self, name: str) -> None:
        """Forget where ``name`` is; its bytes stay as dead space until `compact` rewrites the pack."""
        self.index.forget([name])
        if self.legacy is not None:
            self.legacy.delete(name)

    def iterate(self) -> Iterator[str]:
        yield from self.index.iterate()
        if self.legacy is not None:
            batch: list[str] = []
            for name in self.legacy.iterate():
                batch.append(name)
                if len(batch) >= 1000:
                    yield from self._not_indexed(batch)
                    batch = []
            yield from self._not_indexed(batch)

    def _not_indexed(self, names: list[str]) -> list[str]:
        indexed = self.index.present(names)
        return [n for n in names if n not in indexed]

    # -- compaction ---------------------------------------------------------------------------
    def compact(
        self,
        *,
        threshold: float = 0.25,
        grace: float = 900.0,
        orphan_age: float = 3600.0,
        fault: Callable[[str], None] | None = None,
        progress: Callable[[CompactStats], None] | None = None,
        page_size: int = USAGE_PAGE,
    ) -> CompactStats:
        """Rewrite packs whose dead share is at least ``threshold`` (and merge small ones),
        delete the objects of packs retired more than ``grace`` seconds ago, and delete pack
        objects that no index ever recorded once they are ``orphan_age`` old (a writer died
        between putting a pack and recording it). ``fault(step)`` is a test hook called after
        each step, so that a crash test can stop the process there; ``progress`` gets the
        counts so far after each rewrite and each deletion (rewriting packs on object storage
        moves tens of MiB each). ``page_size``: packs read, and listed names checked, at a time."""
        hook = fault or (lambda _step: None)
        stats = CompactStats()
        told = progress or (lambda _stats: None)
        with self._compacting:
            now = time.time()
            small = self.target_size // SMALL_SHARE

            def worth_it(u: PackUsage) -> bool:
                return u.payload - u.live >= threshold * u.payload

            batch: list[PackUsage] = []
            size = 0

            def take(u: PackUsage) -> None:
                nonlocal batch, size
                batch.append(u)
                size += u.live
                if size >= self.target_size or len(batch) >= REWRITE_PACKS:
                    self._rewrite(batch, stats, hook)
                    told(stats)
                    batch, size = [], 0

            # The pack list is walked a page at a time (`usage_pages`), so that memory holds a
            # page and one batch to rewrite (at most `REWRITE_PACKS`), not every pack. Packs made since the walk began
            # (this run's own rewrites among them) are left to the next run, as a snapshot
            # taken at the start would. The first victim waits for a second: a lone small pack
            # is rewritten only when something else joins it, or for its own dead share.
            first: PackUsage | None = None
            victims = 0
            for page in usage_pages(self.index, page_size):
                dead = [u for u in page if u.live == 0 and u.created_at < now]
                if dead:
                    self.index.switch(None, {}, [u.pack for u in dead])
                    stats.packs_rewritten += len(dead)
                    stats.bytes_reclaimed += sum(u.size for u in dead)
                    hook("retired")
                for u in page:
                    if u.live == 0 or u.created_at >= now or not (worth_it(u) or u.size < small):
                        continue
                    victims += 1
                    if victims == 1:
                        first = u
                        continue
                    if first is not None:
                        take(first)
                        first = None
                    take(u)
            if first is not None and worth_it(first):
                take(first)
            if batch:
                self._rewrite(batch, stats, hook)
                told(stats)
            for pack in self.index.deleted_before(time.time() - grace):
                self.objects.delete(pack_object_name(pack))
                hook("deleted")
                self.index.purge([pack])
                stats.packs_deleted += 1
                told(stats)
            for unrecorded in self._unrecorded(page_size):
                for pack, name, _size in unrecorded:
                    if pack_age(pack, now) > orphan_age:
                        self.objects.delete(name)
                        stats.orphans_deleted += 1
        return stats

    def _unrecorded(self, page_size: int) -> Iterator[list[tuple[str, str, int]]]:
        """The pack objects no index recorded (pack id, object name, size), a page of the
        listing at a time: each page checked against the index in one question
        (`ChunkIndex.known_among`), so that neither the listing nor the pack list is held."""
        for listed in batched(self.objects.list("packs/"), page_size):
            named = [(pack_id_of(name), name, size) for name, size in listed]
            known = self.index.known_among([pack for pack, _, _ in named])
            yield [item for item in named if item[0] not in known]

    def _rewrite(self, usage: list[PackUsage], stats: CompactStats, hook: Callable[[str], None]) -> None:
        """Copy the live chunks of packs into new packs, switch the index, retire the old ones."""
        sources = [u.pack for u in usage]
        locations = self.index.locations_in(sources)
        blobs: list[tuple[str, Stored, int]] = []
        moved_from: dict[str, str] = {}
        missing: set[str] = set()
        for h, loc in sorted(locations.items(), key=lambda kv: (kv[1].pack, kv[1].pos)):
            if loc.pack in missing:
                continue
            try:
                blob = self.objects.get(pack_object_name(loc.pack), loc.pos, loc.stored_len)
            except ObjectMissing:
                # Lost (or retired and deleted by another process's compaction since `usage`):
                # left as it is, so that one lost pack does not stop every repack; its chunks
                # stay where they are, and it is not retired while any chunk points at it.
                missing.add(loc.pack)
                continue
            blobs.append((h, (b"", blob), loc.plain_len))  # codec byte included already
            moved_from[h] = loc.pack
        if missing:
            stats.packs_missing += len(missing)
            log.warning("packs missing; not repacked: run cubby admin check", extra={"packs": sorted(missing)})
        made = self._put_packs(blobs)
        hook("copied")
        for i, new in enumerate(made):
            retire = sources if i == len(made) - 1 else []
            stats.chunks_moved += self.index.switch(new, moved_from, retire)
        if not made:
            self.index.switch(None, {}, sources)
        hook("switched")
        stats.packs_rewritten += len(sources) - len(missing)
        stats.bytes_reclaimed += sum(u.size for u in usage if u.pack not in missing) - sum(p.size for p in made)

    # -- recovery and migration ---------------------------------------------------------------
    def rebuild_index(self, page_size: int = USAGE_PAGE) -> int:
        """Record every pack in the object store that the index does not know, from the packs'
        own trailers (an index lost or restored from an old backup). Returns chunks recorded.
        The listing is taken a page at a time and each page's unknown packs recorded in one
        transaction: a whole index rebuilt holds one page of packs' entries, not all of them,
        and an interrupted rebuild resumes by skipping what it recorded."""
        recorded = 0
        for page in self._unrecorded(page_size):
            found: list[NewPack] = []
            for pack, name, size in page:
                entries = read_trailer(pack, size, functools.partial(self.objects.get, name))
                found.append(NewPack(pack, size, sum(loc.stored_len for _, loc in entries), entries))
            if found:
                self.index.add_packs(found)
                recorded += sum(len(p.entries) for p in found)
        return recorded

    def migrate_legacy(
        self, *, batch_chunks: int = 2000, progress: Callable[[MigrateStats], None] | None = None
    ) -> MigrateStats:
        """Move every chunk of the legacy store into packs: a batch is read, written as a
        pack, recorded in the index, and only then are its legacy files removed. Interrupted,
        it resumes where it stopped (chunks already indexed are skipped)."""
        stats = MigrateStats()
        legacy = self.legacy
        if legacy is None:
            return stats
        batch: list[str] = []

        def flush() -> None:
            nonlocal batch
            todo = self._not_indexed(batch)
            blobs: list[tuple[str, Stored, int]] = []
            for h in todo:
                try:
                    data = legacy.get(h)
                except (NotFound, CorruptChunk):
                    continue  # gone meanwhile, or corrupt: never copied into a pack
                blobs.append((h, self.codec.encode_parts(data), len(data)))
                stats.bytes += len(data)
            self.write_packs(blobs)
            stats.chunks += len(blobs)
            for h in batch:
                legacy.delete(h)
                stats.removed += 1
            if progress is not None:
                progress(stats)
            batch = []

        for name in legacy.iterate():
            batch.append(name)
            if len(batch) >= batch_chunks:
                flush()
        if batch:
            flush()
        return stats
