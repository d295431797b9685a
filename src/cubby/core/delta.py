"""Deltas of one chunk against another: how an edit inside a large file travels in few bytes.

FastCDC already confines an edit to the one or two chunks (about 1 MiB each) that hold it; the
rest of the file is named by chunks both sides have. A delta carries the changed chunk as a
patch against the old chunks at the same place in the file (`pick_bases`: usually one, two
when an edit moved a cut point; their concatenation is the "base"), in one of two forms,
because the two directions know different things:

- **Upload** (the sender has the new bytes, the server has the old chunks; the sender no longer
  has them, the file was overwritten): rsync's idea, with content-defined blocks instead of
  rsync's rolling checksum. The server cuts each old chunk into small content-defined blocks
  (`BLOCK_AVG`, about 2 KiB) and sends their lengths and 8-byte digests (`signature`: some 5 KiB
  for a 1 MiB chunk; the signatures of a base's chunks, concatenated, sign the base); the
  client cuts the new chunk the same way, so that blocks away from the
  edit are cut identically whatever was inserted, and sends a `patch`: copies of old blocks by
  offset, and the new bytes literally, zstd-compressed. A one-byte edit costs one or two blocks
  of literal data. librsync would need fixed blocks and a rolling checksum in Python per byte;
  the content-defined cutter is compiled (pyfastcdc) and resynchronises after an insert by
  itself.
- **Download** (the server has all the chunks; the client names the old chunks it holds): zstd
  with the base as a raw-content dictionary (what ``zstd --patch-from`` does), computed on the
  server. It finds matches at any offset, not only at block boundaries, so it is smaller than a
  patch; it needs both chunks on the side that encodes, which only the server has.

Neither form is trusted: whoever applies one hashes the result and compares it with the new
chunk's name (`ChunkMismatch` otherwise), and a malformed delta is a `BadRequest`. Sizes are
bounded by `MAX_SIZE` (results), `BASE_MAX` (bases) and `WINDOW_LOG` (zstd windows) before
anything is allocated.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import zstandard

from cubby.core.chunking import MAX_SIZE
from cubby.errors import BadRequest

BLOCK_MIN, BLOCK_AVG, BLOCK_MAX = 512, 2048, 8192
"""Sub-blocks of a chunk, for signatures: small enough that an edit sends little literal data,
large enough that a 1 MiB chunk's signature stays near 5 KiB."""
DIGEST = 8
_ENTRY = struct.Struct(">I8s")
_COPY, _LITERAL = 0, 1
_OP = struct.Struct(">BII")  # kind, offset (copies) or 0, length
LEVEL = 3
MAX_SPAN = 4
"""Old chunks one new chunk is encoded against, at most (`pick_bases`)."""
SPAN_SHARE = 64
"""A second (third...) old chunk joins a base only if the new chunk overlaps 1/64 of it: a
signature costs about 1/128 of its chunk (12 bytes per 2 KiB block, base64)."""
BASE_MAX = 2 * MAX_SIZE
"""Bytes of old chunks one new chunk is encoded against, at most: a new chunk (4 MiB at most)
that an edit shifted overlaps two old chunks, rarely more."""
WINDOW_LOG = (BASE_MAX + MAX_SIZE - 1).bit_length()
"""The encoder's window: a whole base and a new chunk fit (16 MiB), so a match may reach back
to the base's first byte. The decoder refuses frames asking for more, so that a hostile server
cannot make a client allocate more than this for a window."""
HASH_LOG = (BASE_MAX - 1).bit_length() - 3
"""zstd indexes only the last ``2 ** (hash_log + 3)`` bytes of a dictionary (it skips what its
tables cannot hold): with level 3's own hash_log (17), only the last 1 MiB of a base was
searched, and a 3 MiB chunk cost 2 MB. 20 covers a whole `BASE_MAX` base (a 4 MiB table)."""
DELTA_LEVEL = 1
"""zstd's "fast" strategy: against a raw-content base it finds the long matches a delta is made
of (a one-byte edit of a 4 MiB chunk: about 400 bytes), where level 3's "dfast" matcher emits a
sequence every kilobyte or so (5 KB) and the lazy levels (5-12) lose the base altogether; it
is also the quickest (0.2 s for 4 MiB)."""

MAX_BASES = 256
"""Old chunks per signature, patch or delta request: each costs the server a chunk read (1 MiB
on average, 4 MiB at most) and, for a download, an encode."""
WHOLE, DELTA = b"\x00", b"\x01"
"""First byte of a fetch_delta frame: the whole chunk follows, or a delta against the base."""
PATCH_FRAME = 1 + 32 * MAX_SPAN + MAX_SIZE + MAX_SIZE // 8
"""The largest patch frame: a count, the base chunks' names and a patch of incompressible bytes
(zstd's overhead)."""
FETCH_FRAME = 1 + MAX_SIZE
PATCH_MIN = 64 * 1024
"""Chunks smaller than this travel whole: a patch would save less than its round trip costs."""


def _blocks(data: bytes) -> list[tuple[int, int]]:
    from pyfastcdc import FastCDC  # at the first patch, not at import (`cubby.core.chunking.new_chunker`)

    cdc = FastCDC(BLOCK_AVG, min_size=BLOCK_MIN, max_size=BLOCK_MAX, normalized_chunking=1)
    return [(c.offset, c.length) for c in cdc.cut_buf(data)] if data else []


def _digest(piece: bytes | memoryview) -> bytes:
    return hashlib.blake2b(piece, digest_size=DIGEST).digest()


def signature(base: bytes) -> bytes:
    """The old chunk's blocks: (length, digest) each, in order."""
    view = memoryview(base)
    return b"".join(_ENTRY.pack(n, _digest(view[o : o + n])) for o, n in _blocks(base))


def patch(sig: bytes, new: bytes) -> bytes:
    """``new`` as copies of the signed chunk's blocks and literal bytes, zstd-compressed."""
    if len(sig) % _ENTRY.size:
        raise BadRequest("a signature is a whole number of (length, digest) entries", code="bad_signature")
    where: dict[bytes, tuple[int, int]] = {}
    off = 0
    for i in range(0, len(sig), _ENTRY.size):
        n, d = _ENTRY.unpack_from(sig, i)
        where.setdefault(d, (off, n))
        off += n
    ops: list[bytes] = []
    view = memoryview(new)
    pending: list[int] = [-1, 0, 0]  # an op being extended: kind, offset, length
    literal = bytearray()

    def flush() -> None:
        if pending[0] == _COPY:
            ops.append(_OP.pack(_COPY, pending[1], pending[2]))
        elif pending[0] == _LITERAL:
            ops.append(_OP.pack(_LITERAL, 0, len(literal)) + bytes(literal))
            literal.clear()
        pending[0] = -1

    for o, n in _blocks(new):
        piece = view[o : o + n]
        hit = where.get(_digest(piece))
        if hit is not None and hit[1] == n:
            if pending[0] == _COPY and pending[1] + pending[2] == hit[0]:
                pending[2] += n
                continue
            flush()
            pending[:] = [_COPY, hit[0], n]
        else:
            if pending[0] != _LITERAL:
                flush()
                pending[0] = _LITERAL
            literal += piece
    flush()
    return zstandard.ZstdCompressor(level=LEVEL).compress(b"".join(ops))


def apply_patch(base: bytes, blob: bytes) -> bytes:
    """The chunk a `patch` describes against ``base`` (the caller checks its hash)."""
    try:
        ops = _decompress(
            zstandard.ZstdDecompressor(max_window_size=1 << WINDOW_LOG), blob, MAX_SIZE + MAX_SIZE // 8
        )
    except zstandard.ZstdError as exc:
        raise BadRequest(f"a patch is not valid zstd: {exc}", code="bad_delta") from exc
    out = bytearray()
    i = 0
    while i < len(ops):
        if len(ops) - i < _OP.size:
            raise BadRequest("a patch ends inside an operation", code="bad_delta")
        kind, off, n = _OP.unpack_from(ops, i)
        i += _OP.size
        if kind == _COPY:
            if off + n > len(base):
                raise BadRequest("a patch copies past the end of its base chunk", code="bad_delta")
            out += base[off : off + n]
        elif kind == _LITERAL:
            if i + n > len(ops):
                raise BadRequest("a patch's literal runs past its end", code="bad_delta")
            out += ops[i : i + n]
            i += n
        else:
            raise BadRequest(f"unknown patch operation {kind}", code="bad_delta")
        if len(out) > MAX_SIZE:
            raise BadRequest(f"a patch makes a chunk larger than {MAX_SIZE} bytes", code="bad_delta")
    return bytes(out)


def _decompress(d: zstandard.ZstdDecompressor, blob: bytes, limit: int) -> bytes:
    """One zstd frame of at most ``limit`` bytes. python-zstandard allocates the size a frame's
    header declares and applies ``max_output_size`` only to frames that declare none, so a
    declared size is checked first: a hostile peer cannot name a terabyte and have it allocated."""
    try:
        declared = zstandard.frame_content_size(blob)
    except zstandard.ZstdError as exc:
        raise BadRequest(f"a delta is not a zstd frame: {exc}", code="bad_delta") from exc
    if declared > limit:
        raise BadRequest(f"a delta declares {declared} bytes, more than {limit}", code="bad_delta")
    return d.decompress(blob, max_output_size=limit)


def _dict(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def encode_against(base: bytes, new: bytes) -> bytes:
    """``new`` compressed with ``base`` as a raw-content dictionary (``zstd --patch-from``)."""
    params = zstandard.ZstdCompressionParameters.from_level(
        DELTA_LEVEL, window_log=WINDOW_LOG, hash_log=HASH_LOG, source_size=len(new)
    )
    return zstandard.ZstdCompressor(dict_data=_dict(base), compression_params=params).compress(new)


def decode_against(base: bytes, blob: bytes) -> bytes:
    """The chunk `encode_against` encoded (the caller checks its hash). A frame that asks for a
    window larger than `WINDOW_LOG` or makes more than `MAX_SIZE` bytes is refused."""
    try:
        d = zstandard.ZstdDecompressor(dict_data=_dict(base), max_window_size=1 << WINDOW_LOG)
        return _decompress(d, blob, MAX_SIZE)
    except zstandard.ZstdError as exc:
        raise BadRequest(f"a delta does not decode against its base: {exc}", code="bad_delta") from exc


def pick_bases(
    new: Sequence[tuple[str, int, int]], old: Sequence[tuple[str, int, int]]
) -> dict[str, tuple[str, ...]]:
    """For each new chunk (name, offset, size), the old chunks it overlaps in the file's
    previous version, in file order: the base it is encoded against is their concatenation.
    An edit moves later bytes by its length at most, so the old bytes at the same place hold
    nearly all of the new chunk's; but one old chunk is not enough, because an edit can move a
    cut point (a 4 KiB insert may hold one), and the chunks after it then straddle two old
    chunks each. At most `MAX_SPAN` chunks and `BASE_MAX` bytes, those overlapping most; an
    old chunk beyond the first joins only if it overlaps by at least 1/`SPAN_SHARE` of its
    size, about what its signature costs an upload (a one-byte insert makes the new chunk
    overlap the next old one by one byte: its 7 KB signature would buy one byte). A chunk
    that is its own only base (unchanged) has none. Both lists are in file order."""
    out: dict[str, tuple[str, ...]] = {}
    j = 0
    for name, off, size in new:
        end = off + size
        while j < len(old) and old[j][1] + old[j][2] <= off:
            j += 1
        over: list[tuple[int, int]] = []  # (overlap, index into old)
        k = j
        while k < len(old) and old[k][1] < end:
            if old[k][0] != name:
                over.append((min(end, old[k][1] + old[k][2]) - max(off, old[k][1]), k))
            k += 1
        kept: list[int] = []
        total = 0
        for n, k in sorted(over, reverse=True)[:MAX_SPAN]:
            if total + old[k][2] <= BASE_MAX and (not kept or n * SPAN_SHARE >= old[k][2]):
                kept.append(k)
                total += old[k][2]
        if kept and name not in out:
            out[name] = tuple(old[k][0] for k in sorted(kept))
    return out


def pack_patch(bases: Sequence[str], blob: bytes) -> bytes:
    """A patch frame's body: how many base chunks, their 32-byte names, the patch."""
    return bytes([len(bases)]) + b"".join(bytes.fromhex(b) for b in bases) + blob


def unpack_patch(data: bytes) -> tuple[tuple[str, ...], bytes]:
    """(base chunk names, patch) of a `pack_patch` body; `BadRequest` if malformed."""
    n = data[0] if data else 0
    if not 1 <= n <= MAX_SPAN or len(data) < 1 + 32 * n:
        raise BadRequest(f"a patch frame starts with 1 to {MAX_SPAN} base chunk names", code="bad_delta")
    return tuple(data[1 + 32 * i : 33 + 32 * i].hex() for i in range(n)), data[1 + 32 * n :]


def offsets(sizes: Sequence[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """(name, size) in file order -> (name, offset, size)."""
    out, off = [], 0
    for name, size in sizes:
        out.append((name, off, size))
        off += size
    return out
