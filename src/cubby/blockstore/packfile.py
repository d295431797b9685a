"""The pack file format: many stored chunks in one immutable object, with its own table of
contents, so that the chunk index can be rebuilt from the packs alone (as restic's can).

    offset 0            b"CUBBYPK1"                         8-byte magic
    offset 8            blob, blob, ...                     each a stored chunk: codec byte +
                                                            payload (`cubby.core.compression`)
    trailer             ENTRY * n                           48 bytes each: SHA-256 (32 raw
                                                            bytes), offset u64, stored length
                                                            u32, plain length u32 (big-endian)
    last 12 bytes       n u32, b"CUBBYEND"

A reader of one chunk needs only its index row (offset, stored length): one ranged read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from cubby.core.compression import RAW, Stored, stored_len
from cubby.core.hashing import Sha256State
from cubby.errors import CubbyError

MAGIC = b"CUBBYPK1"
END = b"CUBBYEND"
_ENTRY = struct.Struct(">32sQII")
_FOOTER = struct.Struct(">I8s")
_RAW_CODEC = bytes((RAW,))
FOOTER_SIZE = _FOOTER.size


class CorruptPack(CubbyError):
    code = "corrupt_pack"
    status = 500


@dataclass(frozen=True, slots=True)
class Location:
    """Where a chunk's stored bytes are: ``stored_len`` bytes at ``pos`` in pack ``pack``."""

    pack: str
    pos: int
    stored_len: int
    plain_len: int


def pack_object_name(pack: str) -> str:
    """The object name of pack id ``pack`` (fanned out by two characters of its random part)."""
    return f"packs/{pack[-2:]}/{pack}.pack"


def pack_id_of(name: str) -> str:
    """The pack id of object name ``name``: `pack_object_name` undone."""
    return name.rsplit("/", 1)[-1].removesuffix(".pack")


def build_pack(pack: str, blobs: list[tuple[str, Stored, int]]) -> tuple[bytes, list[tuple[str, Location]]]:
    """The bytes of a pack holding ``blobs`` (name, stored chunk in its two parts, plain
    length) and where each is. Each chunk's bytes are copied once, into the pack."""
    entries: list[tuple[str, Location]] = []
    return b"".join(pack_parts(pack, blobs, entries)), entries


def pack_parts(
    pack: str,
    blobs: Iterable[tuple[str, Stored, int]],
    entries: list[tuple[str, Location]],
    *,
    known: Mapping[str, Sha256State] | None = None,
    digests: dict[int, Sha256State] | None = None,
) -> Iterator[bytes | memoryview]:
    """The bytes of a pack holding ``blobs``, in pieces, as the blobs come: the magic, each
    blob's two parts, then the table of contents and the footer once ``blobs`` ends. Each
    blob's location is appended to ``entries`` as it is yielded. Written as they come (an
    `ObjectStore` with `put_parts`), a pack's chunks are never copied into one buffer, and
    the writing of one overlaps the verifying of the next; joined, they are `build_pack`.

    ``known``: SHA-256 hashers of chunks' plaintexts, by name (the ones that verified them).
    A raw blob's payload is its plaintext, so its hasher goes into ``digests`` under the
    position of the payload among the pieces yielded (`StreamingPut.put_parts`' ``sha256``)."""
    yield MAGIC
    trailer: list[bytes] = []
    pos = len(MAGIC)
    index = 1
    for name, blob, plain_len in blobs:
        size = stored_len(blob)
        entries.append((name, Location(pack, pos, size, plain_len)))
        trailer.append(entry_bytes(name, entries[-1][1]))
        pos += size
        if digests is not None and known is not None and blob[0] == _RAW_CODEC and len(blob[1]) == plain_len:
            state = known.get(name)
            if state is not None:
                digests[index + 1] = state
        index += 2
        yield from blob
    trailer.append(footer_bytes(len(trailer)))
    yield b"".join(trailer)


def entry_bytes(name: str, loc: Location) -> bytes:
    """The trailer's entry for chunk ``name`` at ``loc``."""
    return _ENTRY.pack(bytes.fromhex(name), loc.pos, loc.stored_len, loc.plain_len)


def footer_bytes(n: int) -> bytes:
    """The footer of a trailer of ``n`` entries."""
    return _FOOTER.pack(n, END)


def pack_size(entries: Sequence[tuple[str, Location]]) -> int:
    """The size in bytes of the pack whose chunks are ``entries`` (as `pack_parts` lays it out)."""
    payload = sum(loc.stored_len for _, loc in entries)
    return len(MAGIC) + payload + len(entries) * _ENTRY.size + FOOTER_SIZE


def read_trailer(pack: str, size: int, read: Callable[[int, int], bytes]) -> list[tuple[str, Location]]:
    """The table of contents of pack ``pack`` of ``size`` bytes, read with two ranged reads."""
    if size < len(MAGIC) + FOOTER_SIZE:
        raise CorruptPack(f"pack {pack} is too short ({size} bytes)")
    n, end = _FOOTER.unpack(read(size - FOOTER_SIZE, FOOTER_SIZE))
    table = n * _ENTRY.size
    if end != END or table > size - len(MAGIC) - FOOTER_SIZE:
        raise CorruptPack(f"pack {pack} has no valid trailer")
    raw = read(size - FOOTER_SIZE - table, table)
    out: list[tuple[str, Location]] = []
    limit = size - FOOTER_SIZE - table
    for i in range(n):
        digest, pos, stored, plain = _ENTRY.unpack_from(raw, i * _ENTRY.size)
        if pos < len(MAGIC) or pos + stored > limit:
            raise CorruptPack(f"pack {pack}: entry {i} points outside the pack")
        out.append((digest.hex(), Location(pack, pos, stored, plain)))
    return out
