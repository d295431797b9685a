"""The chunk index seam: where each chunk of a pack store is (`cubby.blockstore.packs`).

The contract, for every implementation:

- The index is keyed by chunk hash and by nothing else, so that it can be split by hash
  prefix over several databases; it is never joined with tables that describe namespaces.
- `add_packs` records packs that are already durable in the object store, and their chunks,
  in one transaction. A chunk that already has a location keeps it (the newcomer's copy is
  dead bytes that compaction reclaims).
- `switch` moves chunks from old packs to a new one in one transaction, each only if it is
  still where the caller read it (a chunk forgotten or rewritten meanwhile is left alone), and
  retires the old packs that no chunk points at any more: they go to the deleted list, whose
  objects are deleted only after a grace period for reads that looked up a location before.
- `mark_unreadable` records, for every process on the index, that chunks could not be read
  from the pack the index puts them in; `switch` drops a chunk's finding when it moves it out
  of that pack, and `forget` when it removes the chunk.
- `forget` removes chunks' locations (their bytes become dead space in their packs). It is
  called by the garbage collector inside its own transaction on the metadata database; an
  implementation on the same database joins it (see `cubby.metadata.engine`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cubby.blockstore.packfile import Location


@dataclass(frozen=True, slots=True)
class PackUsage:
    pack: str
    size: int
    payload: int
    live: int
    created_at: float


@dataclass(frozen=True, slots=True)
class NewPack:
    pack: str
    size: int
    payload: int
    entries: Sequence[tuple[str, Location]]


USAGE_PAGE = 500
"""Packs per page of `iter_usage`, and pack names per `ChunkIndex.known_among` question: the
collector retires a page's dead packs in one `ChunkIndex.switch`, whose lookups by pack are IN
lists of them, within the 999 parameters older SQLite allows a statement."""


@runtime_checkable
class ChunkIndex(Protocol):
    def lookup(self, hashes: Sequence[str]) -> dict[str, Location]:
        """The location of each of ``hashes`` that has one."""

    def present(self, hashes: Sequence[str]) -> set[str]:
        """Those of ``hashes`` that have a location: `lookup`'s keys, without building a
        location per chunk (an upload asks this of every chunk it receives)."""

    def add_packs(self, packs: Sequence[NewPack]) -> None:
        """Record durable packs and their chunks (first location of a hash wins)."""

    def writes_to(self, db: object) -> bool:
        """Whether `add_packs` writes to the database ``db`` (a metadata `Database`), and so
        joins a write transaction open on it on the same thread (`PackBlockStore.stage_many`)."""

    def forget(self, hashes: Iterable[str]) -> None:
        """Remove the locations of ``hashes``."""

    def iterate(self) -> Iterator[str]:
        """Every indexed hash once."""

    def locations_in(self, packs: Sequence[str]) -> dict[str, Location]:
        """Every indexed chunk that is in one of ``packs``, with its location."""

    def usage_after(self, after: str, limit: int) -> list[PackUsage]:
        """Up to ``limit`` recorded packs whose ids sort after ``after``, in id order, each
        with the bytes of its chunks that are still indexed: a page of `iter_usage`."""

    def switch(self, new: NewPack | None, moved_from: dict[str, str], retire: Sequence[str]) -> int:
        """Point each hash of ``new`` at it if it is still in ``moved_from[hash]`` (and drop
        its unreadable finding there); retire those of ``retire`` that nothing points at.
        Returns the number of chunks moved."""

    def mark_unreadable(self, found: dict[str, str]) -> None:
        """Record that each chunk of ``found`` could not be read from the pack it maps to
        (`cubby.blockstore.packs`, "Mending"), replacing any earlier finding for it."""

    def unreadable(self, hashes: Sequence[str] | None) -> dict[str, str]:
        """Those of ``hashes`` found unreadable and not moved since, each with its pack; every
        one for None (findings are few: a lost pack adds its chunks)."""

    def clear_unreadable(self, found: dict[str, str]) -> None:
        """Drop the findings of ``found`` that still name the same pack (a chunk read intact
        there after all: `cubby admin check --read-data --repair`)."""

    def unreadable_count(self) -> int:
        """How many chunks are found unreadable and wait for their bytes (`cubby admin check`)."""

    def deleted_before(self, cutoff: float) -> list[str]:
        """Retired packs whose grace period ended before ``cutoff``."""

    def purge(self, packs: Sequence[str]) -> None:
        """Drop retired packs whose objects are gone."""

    def known_among(self, packs: Sequence[str]) -> set[str]:
        """Those of ``packs`` that are recorded, retired or not (a page of an object listing:
        what is left is a pack no index recorded)."""

    def newest_packs(self, limit: int) -> list[str]:
        """Up to ``limit`` packs that still hold a chunk, newest first (by id: an id begins with
        its creation time), read through the primary key and the index by pack: what a start-up
        check samples (`cubby.blockstore.startcheck`) without reading the whole table. A pack
        that holds none is waiting for a repack to retire it, and may be gone already."""


def usage_pages(index: ChunkIndex, page: int = USAGE_PAGE) -> Iterator[list[PackUsage]]:
    """Every recorded pack with its live bytes, in id order, a page (one `usage_after` read) at
    a time: what the collector walks holding a page and not the whole pack list (a store of 100
    TB is six million packs of 16 MiB). A page is one consistent read; packs recorded or retired
    between pages are seen or not, as a snapshot taken at either moment would. Each page's live
    bytes are asked in parts of the index's own IN-list size (older SQLite allows 999
    parameters)."""
    after = ""
    while True:
        got = index.usage_after(after, page)
        if got:
            yield got
        if len(got) < page:
            return
        after = got[-1].pack


def iter_usage(index: ChunkIndex, page: int = USAGE_PAGE) -> Iterator[PackUsage]:
    """`usage_pages`, pack by pack."""
    for got in usage_pages(index, page):
        yield from got
