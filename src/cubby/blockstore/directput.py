"""Uploads straight to the bucket: a pack a client PUTs itself, every chunk of it checked by
the bucket against the SHA-256 the server signed.

With ``uploads=direct`` on an S3 store, a client that has chunks to upload asks the blocks
role for a pack to put them in (`plan_direct_put`) and sends the pack to the bucket itself;
then it tells the blocks role, which checks that the object is there (`pack_is_stored`) and
indexes its chunks (`cubby.blockstore.packs.PackBlockStore.stage_direct_put`). The bytes of
an upload never pass through a blocks process: its CPU (the SHA-256 of every chunk, the body
in from the client and out to the bucket: half of a 1 GiB ``cubby put`` on a 2-core machine,
bench/README.md) and its network are spent on a JSON request per pack.

**Why the server need not see the bytes.** A body signed in chunks (SigV4 streaming,
`cubby.blockstore.s3chunked`) carries, for each chunk, an HMAC of that chunk's SHA-256 under
the server's key, and the S3 server hashes each chunk as it reads it and refuses the whole
PUT (storing nothing) if a hash differs. Here each chunk of the body is exactly one of
cubby's chunks, whose SHA-256 is its name: so the server signs the names the client claims,
and the bucket stores the pack only if every chunk in it is the bytes its name says. The
server keeps that promise only where the S3 server was seen to check chunk signatures (the
store's probe; moto does not, and gets no signed PUTs). A client that lies gets its PUT
refused; one that never sends it, or sends it and never says so, leaves at most an
unindexed object, which the collector deletes after an hour (`PackBlockStore.compact`).

**The layout** (`direct_layout`) is the pack format of `cubby.blockstore.packfile` with room
between the blobs: S3 refuses a chunk of a signed body under 8 KiB but the last, and each
blob's codec byte must come right before its payload, so every payload is preceded by a
chunk the server makes itself: 8 KiB of zeros ending in the codec byte (the first also
starting with the pack's magic). The trailer, also the server's, is the last chunk. Readers
find blobs by the trailer's offsets and never read the gaps. The cost: 8 KiB per chunk in the
bucket (under 1% for the 1 MiB chunks of large files; chunks under `MIN_DIRECT` are uploaded
through the blocks role), and no compression: the blobs are raw, since the server does not
see the bytes to compress them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cubby.blockstore.objects import SIGNED_CHUNK_MIN, ObjectStore, SignedPut, signed_put, stored_size
from cubby.blockstore.packfile import MAGIC, Location, entry_bytes, footer_bytes, pack_object_name
from cubby.core.chunking import MIN_DIRECT
from cubby.core.compression import RAW
from cubby.errors import CubbyError

GAP = SIGNED_CHUNK_MIN
"""Bytes of the server's own chunk before each payload: S3's least chunk of a signed body."""
assert MIN_DIRECT >= SIGNED_CHUNK_MIN  # each chunk a client puts is one chunk of the signed body


@dataclass(frozen=True, slots=True)
class Literal:
    """A piece of a pack the server makes: ``head``, ``zeros`` zero bytes, then ``tail``."""

    head: bytes
    zeros: int
    tail: bytes

    @property
    def size(self) -> int:
        return len(self.head) + self.zeros + len(self.tail)

    def data(self) -> bytes:
        return self.head + bytes(self.zeros) + self.tail


@dataclass(frozen=True, slots=True)
class DirectLayout:
    """A pack a client puts itself: its ``parts`` in order (the server's own bytes, or a
    chunk's payload by name and size), the ``entries`` of its trailer, and its ``size``."""

    pack: str
    parts: list[Literal | tuple[str, int]]
    entries: list[tuple[str, Location]]
    size: int

    def signed_chunks(self) -> list[tuple[int, str]]:
        """The body's chunks as the PUT is signed for them: (size, SHA-256 hex) of each part."""
        out: list[tuple[int, str]] = []
        for part in self.parts:
            if isinstance(part, Literal):
                out.append((part.size, hashlib.sha256(part.data()).hexdigest()))
            else:
                out.append((part[1], part[0]))
        return out


def direct_layout(pack: str, chunks: Sequence[tuple[str, int]]) -> DirectLayout:
    """The layout of pack ``pack`` holding ``chunks`` (name, size; distinct, each at least
    `MIN_DIRECT`), in order: the same for the same arguments, so that the request that hands
    out the PUT and the one that adopts the pack need not share any state."""
    parts: list[Literal | tuple[str, int]] = []
    entries: list[tuple[str, Location]] = []
    codec = bytes((RAW,))
    pos = 0
    for i, (name, size) in enumerate(chunks):
        gap = Literal(MAGIC, GAP - len(MAGIC) - 1, codec) if i == 0 else Literal(b"", GAP - 1, codec)
        parts.append(gap)
        pos += gap.size
        entries.append((name, Location(pack, pos - 1, size + 1, size)))
        parts.append((name, size))
        pos += size
    trailer = b"".join(entry_bytes(name, loc) for name, loc in entries) + footer_bytes(len(entries))
    parts.append(Literal(trailer, 0, b""))
    return DirectLayout(pack, parts, entries, pos + len(trailer))


@dataclass(frozen=True, slots=True)
class DirectPut:
    """A pack a client may put: its layout and the signed PUT of it."""

    layout: DirectLayout
    put: SignedPut

    def to_wire(self) -> dict[str, object]:
        parts: list[dict[str, object]] = []
        for part in self.layout.parts:
            if isinstance(part, Literal):
                parts.append({"head": part.head.hex(), "zeros": part.zeros, "tail": part.tail.hex()})
            else:
                parts.append({"chunk": part[0], "size": part[1]})
        return {
            "pack": self.layout.pack,
            "url": self.put.url,
            "headers": dict(self.put.headers),
            "parts": parts,
            "signatures": list(self.put.signatures),
        }


def plan_direct_put(objects: ObjectStore, pack: str, chunks: Sequence[tuple[str, int]]) -> DirectPut | None:
    """The PUT of a new pack ``pack`` holding ``chunks``, for a client to send; None where
    ``objects`` hands out no such PUTs (`cubby.blockstore.objects.SignedPuts`)."""
    layout = direct_layout(pack, chunks)
    put = signed_put(objects, pack_object_name(pack), layout.signed_chunks())
    return None if put is None else DirectPut(layout, put)


@dataclass(frozen=True, slots=True)
class StagedDirect:
    """A stored pack a client put, to index: ``new`` says which of its chunks the index did
    not place yet; ``index`` records those (in the caller's transaction where the index
    writes there, else it did already and does nothing); ``again(names)`` stores the pack's
    copies of ``names`` once more, in a pack of the server's own: chunks the index placed
    elsewhere when asked but whose bytes the collector took meanwhile
    (`cubby.metadata.chunks.ChunkAccess.ingest_direct`)."""

    new: list[bool]
    index: Callable[[], None]
    again: Callable[[Sequence[str]], None]


class PackNotStored(CubbyError):
    """The pack a client was handed a PUT for is not in the bucket (not sent, refused by the
    bucket, or not the size it was laid out to be): nothing of it is indexed."""

    status = 409
    code = "pack_not_stored"


def pack_is_stored(objects: ObjectStore, layout: DirectLayout) -> None:
    """Raise `PackNotStored` unless the bucket holds pack ``layout`` at its size. The size is
    all there is to check: only the signed PUT could have written that name (a fresh random
    one), and the bucket stored it only if every chunk matched its signature."""
    size = stored_size(objects, pack_object_name(layout.pack))
    if size != layout.size:
        found = "no such object" if size is None else f"{size} bytes, not {layout.size}"
        raise PackNotStored(
            f"pack {layout.pack} is not in the bucket as it was laid out ({found}): send the PUT"
            " again, or upload the chunks through the blocks role"
        )


def stage_direct(store: object, pack: str, chunks: Sequence[tuple[str, int]], within: object) -> StagedDirect:
    """``store.stage_direct_put`` where ``store`` hands out PUTs (`HandsOutPuts`); else
    `PackNotStored`, since no client could have been handed a PUT of ``pack``: how a caller
    or a wrapper passes the call on to a store it does not know."""
    if not isinstance(store, HandsOutPuts):
        raise PackNotStored(f"pack {pack}: this server's block store takes no packs put by clients")
    return store.stage_direct_put(pack, chunks, within)


@runtime_checkable
class HandsOutPuts(Protocol):
    """A block store that can hand out PUTs of packs to clients and adopt them once stored
    (`cubby.blockstore.packs.PackBlockStore`)."""

    def direct_put(self, chunks: Sequence[tuple[str, int]]) -> DirectPut | None:
        """A new pack for ``chunks``, or None when this store hands out no PUTs."""

    def stage_direct_put(self, pack: str, chunks: Sequence[tuple[str, int]], within: object) -> StagedDirect:
        """Once pack ``pack`` (laid out for ``chunks``) is stored (else `PackNotStored`): which
        of ``chunks`` are new, and how to index them (`StagedDirect`), in the caller's
        transaction on ``within`` where the index writes there (as
        `cubby.blockstore.base.StagedPut`)."""
