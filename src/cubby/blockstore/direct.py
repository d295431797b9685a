"""Downloads straight from the bucket: which bytes of which packs a client may read itself.

With ``downloads=direct`` on an S3 store, a client that may read some chunks (the blocks
route checks that first, as for a fetch) is handed signed reads of the packs that hold them
(`cubby.blockstore.objects.SignedReads`) and GETs those bytes from the bucket, so that a
download's bytes do not pass through a blocks process: its CPU (a third of a 1 GiB ``cubby
get``'s on a 2-core machine, bench/README.md) and its network are spent on nothing but the
plan. Any number of blocks processes can hand out reads of any pack, as they serve any chunk.

What a read may cover is the point of this module: **only the chunks asked for, and all of
them readable by the caller**. A pack holds other users' chunks too, so a read never spans a
gap between two chunks (unlike `cubby.blockstore.extents`, which reads across small gaps for
the server's own use): neighbouring chunks asked for, one right after the other in one pack,
share a read, and that is all. The range is signed, so the client cannot widen it.

The client still trusts nothing it reads: it decodes and verifies every chunk against its
name, and asks the blocks process for the chunks of a read that fails (`ApiClient.fetch_chunks`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cubby.blockstore.extents import SPAN
from cubby.blockstore.objects import ObjectStore, SignedRead, signed_read
from cubby.blockstore.packfile import Location, pack_object_name


@dataclass(frozen=True, slots=True)
class DirectRead:
    """One signed read, and the chunks its bytes are, in order and back to back from its
    first byte: ``(name, stored length, plain length)`` each."""

    read: SignedRead
    chunks: list[tuple[str, int, int]]

    def to_wire(self) -> dict[str, object]:
        return {"url": self.read.url, "headers": dict(self.read.headers), "chunks": [list(c) for c in self.chunks]}


@dataclass(slots=True)
class DirectPlan:
    """The reads a client makes itself, and the chunks it asks the blocks process for
    instead (``fetch``: not in a pack, or in none the store signs reads of)."""

    reads: list[DirectRead] = field(default_factory=list)
    fetch: list[str] = field(default_factory=list)


@runtime_checkable
class HandsOutReads(Protocol):
    """A block store that can plan downloads from its object store (`PackBlockStore`)."""

    def direct_reads(self, names: Sequence[str]) -> DirectPlan | None:
        """The plan for ``names`` (distinct, all readable by the caller: checked before), or
        None when this store hands out no reads (its objects are not in a bucket with
        ``downloads=direct``): the client then fetches everything through the blocks role."""


MIN_READ = 256 << 10
"""Fewer bytes than this in a read, and its chunks are fetched through the blocks role instead:
a GET costs the bucket and the client a round trip and a fixed price, the fetch route sends
small chunks by the thousand in one answer. (A tree of small files downloads in the order it
was uploaded, so its chunks still lie back to back and share reads of up to `SPAN`.)"""


def plan_direct_reads(
    objects: ObjectStore, names: Sequence[str], located: Mapping[str, Location], span: int = SPAN,
    min_read: int = MIN_READ,
) -> DirectPlan | None:
    """Group ``names`` (in the order asked) into signed reads of ``objects``: a chunk joins the
    read before it only when it starts exactly where that read ends, in the same pack, and the
    read stays within ``span`` bytes (a larger chunk is a read of its own); a read of fewer
    than ``min_read`` bytes is left to the fetch route. None when ``objects`` signs no reads
    (the first one it is asked for tells)."""
    plan = DirectPlan()
    groups: list[tuple[str, int, int, list[tuple[str, int, int]]]] = []  # pack, start, end, chunks
    for name in names:
        loc = located.get(name)
        if loc is None:
            plan.fetch.append(name)
            continue
        entry = (name, loc.stored_len, loc.plain_len)
        if groups:
            pack, start, end, chunks = groups[-1]
            if pack == loc.pack and loc.pos == end and end + loc.stored_len - start <= span:
                chunks.append(entry)
                groups[-1] = (pack, start, end + loc.stored_len, chunks)
                continue
        groups.append((loc.pack, loc.pos, loc.pos + loc.stored_len, [entry]))
    for pack, start, end, chunks in groups:
        if end - start < min_read:
            plan.fetch += [name for name, _, _ in chunks]
            continue
        read = signed_read(objects, pack_object_name(pack), start, end - start)
        if read is None:
            return None
        plan.reads.append(DirectRead(read, chunks))
    if groups and not plan.reads:  # every read too small: whether the store signs any is still to be told
        pack, start, end, _ = groups[0]
        if signed_read(objects, pack_object_name(pack), start, end - start) is None:
            return None
    return plan
