"""Planning the reads of many chunks from packs: neighbouring chunks become one ranged read.

A file's chunks lie one after another in the packs it was uploaded into, so a download asks
for runs of chunks that are adjacent in one pack. On object storage every read is a request
with a round trip and a fixed cost on the server; reading a run as one *extent* of a few MiB
makes a download of N chunks cost about ``bytes / span`` requests instead of N, and the
extents can then be read concurrently (`cubby.blockstore.packs.PackBlockStore.read_many`).

This module is pure: it only groups locations, in the order asked, and never reorders them,
so that the caller can hand chunks back in the order they were asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cubby.blockstore.packfile import Location

SPAN = 8 << 20
"""Most bytes one read covers: boto3's own transfer part size. Each S3 request costs the
reader a fixed CPU price (boto3 builds, signs and parses it), and on a 2-core machine the
server's CPU is what a download from object storage waits for. Ranged GETs of 16 MiB objects
on Ceph RGW, 8 at a time (2026-12-02, load 9-11, three rounds): the reading process spent
1.30-1.41 CPU s per GiB in 4 MiB reads, 0.85-0.94 in 8 MiB reads and 0.58-0.75 in 16 MiB
reads; Ceph's own CPU was the same for all three (2.8-3.4 s per GiB), though a 4 MiB read at
an offset not aligned to RGW's 4 MiB stripes touches two RADOS objects. Not 16 MiB: two
extents per 16 MiB download window still read side by side, one would not."""
GAP = 256 << 10
"""Most bytes between two chunks that one read still spans (dead chunks, or chunks asked for
elsewhere): reading them costs less than a second request."""


@dataclass(slots=True)
class Extent:
    """One read: bytes ``[start, end)`` of pack ``pack``, holding ``members`` in the order
    asked. ``pack`` None groups chunks that have no location (read one by one by the caller:
    from a legacy store, or `NotFound`)."""

    pack: str | None
    start: int
    end: int
    members: list[tuple[str, Location | None]] = field(default_factory=list)


def plan_extents(
    wanted: Sequence[tuple[str, Location | None]], span: int = SPAN, gap: int = GAP
) -> list[Extent]:
    """Group ``wanted`` (name, location or None), in order, into reads: a chunk joins the
    read before it when it is in the same pack, at or after that read's start, at most
    ``gap`` bytes past its end, and the read stays within ``span`` bytes (a chunk larger than
    ``span`` is a read of its own)."""
    out: list[Extent] = []
    cur: Extent | None = None
    for name, loc in wanted:
        if loc is None:
            if cur is None or cur.pack is not None:
                cur = Extent(None, 0, 0)
                out.append(cur)
            cur.members.append((name, None))
            continue
        end = loc.pos + loc.stored_len
        if (
            cur is not None
            and cur.pack == loc.pack
            and cur.start <= loc.pos <= cur.end + gap
            and max(cur.end, end) - cur.start <= span
        ):
            cur.end = max(cur.end, end)
        else:
            cur = Extent(loc.pack, loc.pos, end)
            out.append(cur)
        cur.members.append((name, loc))
    return out
