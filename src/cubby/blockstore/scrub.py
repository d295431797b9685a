"""`scrub`: is every chunk the server holds where its index says, and (``read_data``) intact?

What `cubby admin check` runs, as ``restic check`` and ``borg check`` do for their stores: a
pack store can lose what no request notices until a user downloads the file. An object
deleted by hand or by a bucket's lifecycle rule, a bucket restored from an older backup, a
pack truncated by a failing disk, a bit flipped at rest. Worst of all is a chunk the server
believes it holds (a ``blocks`` row) but cannot read: an upload of the same bytes is
deduplicated against it, so every new file with that chunk is broken too. Found early, the
operator can restore the packs or have the files uploaded again (`cubby.metadata.damage`
names them).

Three passes, each reading only what it must:

1. **Packs.** Every pack the index records is listed in the object store (one listing of
   ``packs/``) with the size recorded; the rest of the listing older than an hour is counted as
   orphans (a writer died between its PUT and its index row; `PackBlockStore.compact` deletes
   them). Younger objects may be packs being recorded right now.
2. **Held chunks** (``held``: the hashes of the ``blocks`` table, in pages): each has a location
   in the index, or a file in an earlier release's store (`PackBlockStore.legacy`); with
   ``read_data`` each of those files is read and hashed against its name, page by page.
3. **Data** (``read_data``): every recorded pack is read whole, once, and each chunk the index
   places in it is decoded and hashed against its name. This reads the whole store.
4. **Referenced chunks** (``referenced``, pages of the chunks current files name): each has a
   place. One missing here but not among the held is a chunk the garbage collector (or a hand
   in the database) took from under a file.

A compaction running beside the check (the server may keep serving) is not damage: a pack is
missing only if chunks are still placed in it when they are looked up, after the listing (a
compaction moves every live chunk out before it retires a pack, and deletes the object after
a grace period); a chunk found unlocated is looked up once more after the pass. Nor is an
upload: a pack recorded after the listing was taken, and so not in it, is looked for on its own
before it is called absent (a pack made less than `ORPHAN_AGE` before the listing began: an
older one was recorded, if at all, long before).

Memory. Neither the pack list nor the listing is held: the listing is written to a scratch
SQLite file as it comes (`_Listing`, a few dozen bytes a pack on disk), and the recorded packs
are walked a page at a time (`usage_pages`), each page's listed sizes asked of that file; so a
store of millions of packs is checked in the memory of a page, as `PackBlockStore.compact`
walks it. What is held is what is found damaged.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from cubby.blockstore.index import USAGE_PAGE, usage_pages
from cubby.blockstore.objects import ObjectMissing, ShortRead
from cubby.blockstore.packfile import Location, pack_id_of, pack_object_name
from cubby.blockstore.packs import PackBlockStore, pack_age
from cubby.core.batched import batched
from cubby.core.compression import CorruptChunk
from cubby.core.hashing import sha256_hex
from cubby.errors import NotFound

ORPHAN_AGE = 3600.0
"""Pack objects no index row names are counted once this old (`PackBlockStore.compact`'s own
``orphan_age``): younger ones may be packs whose row is being written."""


@dataclass
class ScrubReport:
    """What `scrub` found. Lists name pack objects (``packs/XY/ID.pack``) or chunk hashes."""

    packs: int = 0
    packs_missing: list[str] = field(default_factory=list)
    """Objects of recorded packs that are gone while chunks are still placed in them."""
    packs_absent: list[str] = field(default_factory=list)
    """Ids of every recorded pack whose object is gone, damage or not (a repair retires those
    that no chunk points at)."""
    packs_wrong_size: list[str] = field(default_factory=list)
    orphan_packs: int = 0
    held_chunks: int = 0
    chunks_unlocated: list[str] = field(default_factory=list)
    """Held (a ``blocks`` row) but with no location and no legacy file: lost."""
    chunks_lost: list[str] = field(default_factory=list)
    """Indexed in a pack that is missing, or that ends before the chunk does."""
    read_data: bool = False
    chunks_read: int = 0
    bytes_read: int = 0
    chunks_corrupt: list[str] = field(default_factory=list)
    """Read, but not decoding to bytes of their name and length."""
    legacy_corrupt: list[str] = field(default_factory=list)
    """Those of ``chunks_corrupt`` read from the earlier release's store: a repair deletes
    their files once it has forgotten them, else the next upload would be deduplicated
    against them again (`PackBlockStore.present` finds them there)."""
    referenced_chunks: int = 0
    chunks_missing: list[str] = field(default_factory=list)
    """Named by a current file, but with no place in the store: lost."""
    found_unreadable: int = 0
    """Chunks the servers failed to read and no upload has mended yet
    (`ChunkIndex.unreadable_count`): their findings, which this check does not need to agree."""
    findings_intact: dict[str, str] = field(default_factory=dict)
    """With ``read_data``: the findings whose chunk this check read intact where they say it
    could not be read (a read that failed once, a pack restored since): a repair drops them."""
    places: dict[str, str | None] = field(default_factory=dict)
    """Each damaged chunk and the pack it was found damaged in (None: it had no place), what a
    repair checks is still so before it forgets the chunk (`cubby.metadata.damage.forget_damaged`)."""

    @property
    def damaged(self) -> list[str]:
        """Every chunk that cannot be served, sorted."""
        return sorted(self.places)

    @property
    def ok(self) -> bool:
        return not (self.packs_missing or self.packs_wrong_size or self.damaged)


def scrub(
    store: PackBlockStore,
    held: Iterable[list[str]],
    *,
    read_data: bool = False,
    referenced: Iterable[list[str]] = (),
    progress: Callable[[ScrubReport], None] | None = None,
    page_size: int = USAGE_PAGE,
) -> ScrubReport:
    """Check ``store`` as the module docstring says; ``progress`` gets the report so far after
    each page of chunks looked up and each pack read. ``page_size``: packs per page of the
    listing and of the index's pack list (tests make it small to walk many pages)."""
    told = progress or (lambda _report: None)
    report = ScrubReport(read_data=read_data)
    report.found_unreadable = store.index.unreadable_count()
    started = time.time()
    with _Listing(store.objects.list("packs/")) as listed:
        now = time.time()
        for names in listed.pages(page_size):
            known = store.index.known_among(names)
            report.orphan_packs += sum(1 for p in names if p not in known and pack_age(p, now) > ORPHAN_AGE)
        lost: dict[str, Location] = {}
        for page in usage_pages(store.index, page_size):
            report.packs += len(page)
            sizes = listed.sizes([u.pack for u in page])
            # Recorded but not listed: gone, or made after the listing began (younger than
            # `ORPHAN_AGE` then: looked for again, one by one; a store that is not this
            # index's, where every pack is unlisted, costs no such lookups for older ones).
            absent = [
                u.pack for u in page
                if u.pack not in sizes and (pack_age(u.pack, started) > ORPHAN_AGE or not _exists(store, u.pack))
            ]
            short = {u.pack: sizes[u.pack] for u in page if u.pack in sizes and sizes[u.pack] != u.size}
            report.packs_absent.extend(absent)
            # A pack is missing when chunks are still placed in it, read after the listing: one
            # that a compaction emptied meanwhile (its object deleted after its grace) holds none.
            found = store.index.locations_in(absent) if absent else {}
            report.packs_missing.extend(sorted({pack_object_name(loc.pack) for loc in found.values()}))
            report.packs_wrong_size.extend(pack_object_name(p) for p in short)
            for p, size in short.items():
                found.update({h: loc for h, loc in store.index.locations_in([p]).items() if loc.pos + loc.stored_len > size})
            lost.update(found)
        report.packs_absent.sort()
        report.packs_missing.sort()
        report.packs_wrong_size.sort()
        report.chunks_lost = sorted(lost)
        report.places.update({h: loc.pack for h, loc in lost.items()})

        unlocated: list[str] = []
        for names in held:
            report.held_chunks += len(names)
            indexed = store.index.present(names)
            rest = [h for h in names if h not in indexed]
            in_legacy = store.legacy.present(rest) if store.legacy is not None and rest else set()
            unlocated.extend(h for h in rest if h not in in_legacy)
            if read_data and in_legacy:
                _read_legacy(store, sorted(in_legacy), report)
            told(report)
        report.chunks_unlocated = _still_unplaced(store, unlocated)
        report.places.update(dict.fromkeys(report.chunks_unlocated))

        if read_data:
            findings = store.index.unreadable(None) if report.found_unreadable else {}
            findings_packs = set(findings.values())
            done: set[str] = set()  # of the packs findings name, those read
            for page in usage_pages(store.index, page_size):
                sizes = listed.sizes([u.pack for u in page])
                for pack in (u.pack for u in page if u.pack in sizes):  # a short pack's chunks before its end too
                    _read_pack(store, pack, report)
                    if pack in findings_packs:
                        done.add(pack)
                    told(report)
            if done:
                # A finding about a pack this check read, whose chunk is still placed there and
                # was not found damaged: the chunk read intact where a server could not read it.
                located = store.index.lookup(sorted(findings))
                report.findings_intact = {
                    h: p for h, p in findings.items()
                    if p in done and h not in report.places and h in located and located[h].pack == p
                }

    missing: set[str] = set()
    for names in referenced:
        report.referenced_chunks += len(names)
        found_now = store.present(names)
        missing.update(h for h in names if h not in found_now and h not in report.places)
        told(report)
    report.chunks_missing = _still_unplaced(store, list(missing))
    report.places.update(dict.fromkeys(report.chunks_missing))
    return report


def _exists(store: PackBlockStore, pack: str) -> bool:
    """Whether pack ``pack``'s object is in the store now (an empty read: S3's HEAD)."""
    try:
        store.objects.get(pack_object_name(pack), 0, 0)
    except ObjectMissing:
        return False
    return True


class _Listing:
    """One listing of the packs (id and size of each), kept in a scratch SQLite file that is
    deleted when the block ends, so that a check holds a page of it, not all of it."""

    def __init__(self, listing: Iterable[tuple[str, int]]) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="cubby-check-")
        self._db = sqlite3.connect(os.path.join(self._dir.name, "listing.db"), isolation_level=None)
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        try:
            self._db.execute("CREATE TABLE listed (pack TEXT PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID")
            for names in batched(listing, 1000):
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO listed VALUES (?, ?)", [(pack_id_of(name), size) for name, size in names]
                )
                self._db.execute("COMMIT")
        except BaseException:  # the listing failed (the store did not answer): no file is left
            self.__exit__(None, None, None)
            raise

    def pages(self, size: int) -> Iterator[list[str]]:
        """The listed pack ids in id order, ``size`` at a time."""
        after = ""
        while True:
            got = [r[0] for r in self._db.execute("SELECT pack FROM listed WHERE pack > ? ORDER BY pack LIMIT ?", (after, size))]
            if not got:
                return
            yield got
            after = got[-1]

    def sizes(self, packs: Sequence[str]) -> dict[str, int]:
        """The listed size of each of ``packs`` that was listed."""
        out: dict[str, int] = {}
        for part in batched(packs, 500):  # (older SQLite allows 999 parameters)
            marks = ",".join("?" * len(part))
            out.update(self._db.execute(f"SELECT pack, size FROM listed WHERE pack IN ({marks})", part).fetchall())
        return out

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._db.close()
        self._dir.cleanup()


def _still_unplaced(store: PackBlockStore, names: list[str]) -> list[str]:
    """``names``, found without a place during a pass, looked up once more after it (an upload
    may have stored one meanwhile): those still without one, sorted."""
    if not names:
        return []
    found = store.present(names)
    return sorted(n for n in names if n not in found)


def _read_legacy(store: PackBlockStore, names: list[str], report: ScrubReport) -> None:
    """Read each of ``names`` from the earlier release's store (a file per chunk) and hash it
    against its name. One gone since it was listed was moved into a pack meanwhile
    (`cubby admin migrate-blocks`): it is not checked by this run."""
    legacy = store.legacy
    assert legacy is not None
    for name in names:
        try:
            data = legacy.get(name)
        except NotFound:
            continue
        except (CorruptChunk, OSError):  # does not decode, or the disk cannot read it
            intact = False
        else:
            report.bytes_read += len(data)
            intact = sha256_hex(data) == name
        report.chunks_read += 1
        if not intact:
            report.chunks_corrupt.append(name)
            report.legacy_corrupt.append(name)
            report.places[name] = None


def _read_pack(store: PackBlockStore, pack: str, report: ScrubReport) -> None:
    """Read ``pack`` whole and check each chunk the index places in it (but those found lost
    already: past the end of a short pack)."""
    locations = {h: loc for h, loc in store.index.locations_in([pack]).items() if h not in report.places}
    if not locations:
        return
    try:
        blob = memoryview(store.objects.get(pack_object_name(pack)))
    except ObjectMissing:
        return  # retired since the listing: its chunks live in a newer pack, read on its own
    except ShortRead:  # shorter than listed a moment ago: a new object under the old name
        report.chunks_lost.extend(locations)
        report.places.update(dict.fromkeys(locations, pack))
        return
    report.bytes_read += len(blob)
    for name, loc in locations.items():
        report.chunks_read += 1
        piece = blob[loc.pos : loc.pos + loc.stored_len]
        try:
            data = store.codec.decode(piece)
            intact = len(piece) == loc.stored_len and len(data) == loc.plain_len and sha256_hex(data) == name
        except CorruptChunk:
            intact = False
        if not intact:
            report.chunks_corrupt.append(name)
            report.places[name] = pack


__all__ = ["ORPHAN_AGE", "ScrubReport", "scrub"]
