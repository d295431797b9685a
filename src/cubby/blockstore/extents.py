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

SPAN = 4 << 20
"""Most bytes one read covers. Four such reads in flight fill a 16 MiB download window, and
on Ceph RGW 4 MiB is the size of the RADOS objects a large S3 object is striped over."""
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
