"""Chunk frames: how many chunks travel in one HTTP body, in either direction.

A body is a sequence of frames ``32-byte SHA-256 | 4-byte big-endian length | bytes``. The
reader is incremental (it is fed whatever the network delivers) and refuses a frame longer
than the largest chunk before buffering it, so a hostile length cannot make it allocate.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeAlias

from cubby.core.chunking import MAX_SIZE
from cubby.errors import BadRequest, PayloadTooLarge

CONTENT_TYPE = "application/x-cubby-chunks"
HEADER = struct.Struct(">32sI")


def header(name: str, length: int) -> bytes:
    """The header of a frame of ``length`` bytes named ``name``; its bytes follow it."""
    return HEADER.pack(bytes.fromhex(name), length)


def encode(name: str, data: bytes) -> bytes:
    return header(name, len(data)) + data


def frame_too_long(length: int, largest: int) -> PayloadTooLarge:
    """The error for a frame header that declares more than the largest chunk."""
    return PayloadTooLarge(f"a chunk frame declares {length} bytes; the largest chunk is {largest}")


def ends_inside_a_frame() -> BadRequest:
    """The error for a body that ends in the middle of a frame: a truncated chunk must never
    pass for the end of the list."""
    return BadRequest("the body ends in the middle of a chunk frame (truncated upload?)", code="truncated_body")


JOIN_BELOW = 64 * 1024
"""Frames of chunks smaller than this are joined into pieces of about `PIECE` bytes by
`encode_many`; larger chunks go out as their header and their own bytes, uncopied."""
PIECE = 256 * 1024


def encode_many(items: Iterable[tuple[str, bytes]]) -> Iterator[bytes]:
    """The frames of ``items``, as pieces for an HTTP body. Each piece handed to the HTTP
    library is one event and one socket write with their own bookkeeping (h11, httpcore: some
    20 us of CPU), which two pieces per 4 KiB chunk made most of the cost of uploading small
    files; so small frames are joined (a copy of a few KiB costs far less), large ones are not."""
    joined: list[bytes] = []
    size = 0
    for name, data in items:
        if len(data) >= JOIN_BELOW:
            if joined:
                yield b"".join(joined)
                joined, size = [], 0
            yield header(name, len(data))
            yield data
            continue
        joined.append(header(name, len(data)))
        joined.append(data)
        size += HEADER.size + len(data)
        if size >= PIECE:
            yield b"".join(joined)
            joined, size = [], 0
    if joined:
        yield b"".join(joined)


class FrameReader:
    """Feed bytes in with `feed`; take complete (name, data) frames out of its return value.

    Each chunk's bytes are copied once, from the pieces the network delivered into the bytes
    handed out (`bytes.join` of views). It used to append every piece to one growing
    ``bytearray`` and copy each frame out of it: two copies, and the append's reallocations
    of a buffer of up to 4 MiB. Profiled in a 256 MiB `cubby get` (py-spy, native), those
    two lines were 15% of the client's samples, three times its SHA-256 of the same bytes.
    Pieces are held as views until their frame completes: a ``bytes`` piece as it is (it is
    immutable), any other buffer copied first, since its owner may reuse it."""

    def __init__(self, max_frame: int = MAX_SIZE) -> None:
        self.max_frame = max_frame
        self._pieces: deque[memoryview] = deque()
        self._have = 0
        self._need: tuple[str, int] | None = None

    def _take(self, n: int) -> bytes:
        """The next ``n`` buffered bytes (at most ``_have``), as one new bytes object."""
        parts: list[memoryview] = []
        need = n
        while need:
            piece = self._pieces[0]
            if len(piece) <= need:
                parts.append(self._pieces.popleft())
                need -= len(piece)
            else:
                parts.append(piece[:need])
                self._pieces[0] = piece[need:]
                need = 0
        self._have -= n
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[str, bytes]]:
        if not isinstance(data, bytes):
            data = bytes(data)  # its owner may reuse the buffer before the frame completes
        if data:
            self._pieces.append(memoryview(data))
            self._have += len(data)
        out: list[tuple[str, bytes]] = []
        while True:
            if self._need is None and len(self._pieces) == 1:
                self._whole_frames(out)
            if self._need is None:
                if self._have < HEADER.size:
                    return out
                raw, length = HEADER.unpack(self._take(HEADER.size))
                if length > self.max_frame:
                    raise frame_too_long(length, self.max_frame)
                self._need = (raw.hex(), length)
            name, length = self._need
            if self._have < length:
                return out
            out.append((name, self._take(length)))
            self._need = None

    def _whole_frames(self, out: list[tuple[str, bytes]]) -> None:
        """Take every frame that lies whole in the one buffered piece, read in place (each
        chunk's bytes copied once, as `_take` does), leaving the piece's tail. An upload of
        small chunks is a dozen frames per piece the network delivers: a `_take` per header
        and per chunk (a deque and a list each) was most of the event loop's time per chunk."""
        view = self._pieces[0]
        off, end, size, largest = 0, len(view), HEADER.size, self.max_frame
        while end - off >= size:
            raw, length = HEADER.unpack_from(view, off)
            if length > largest:
                raise frame_too_long(length, largest)
            start = off + size
            if end - start < length:
                break
            out.append((raw.hex(), view[start : start + length].tobytes()))
            off = start + length
        if off:
            self._have -= off
            if off == end:
                self._pieces.clear()
            else:
                self._pieces[0] = view[off:]

    def close(self) -> None:
        """Call at end of body: a partial frame means the body was truncated."""
        if self._need is not None or self._have:
            raise ends_inside_a_frame()


ReadInto: TypeAlias = Callable[[memoryview], int]
"""Fills the front of a buffer with the next bytes of a body, says how many (0: the body ended)."""


def fill(readinto: ReadInto, view: memoryview) -> int:
    """Fill ``view`` from ``readinto``; the bytes filled, fewer only when the body ended."""
    got = 0
    while got < len(view):
        n = readinto(view[got:])
        if n <= 0:
            break
        got += n
    return got


def read_frames(readinto: ReadInto, max_frame: int = MAX_SIZE) -> Iterator[tuple[str, bytearray]]:
    """The frames of a body read with ``readinto``, each chunk's bytes read straight into the
    buffer handed out, made to the length its header declares: no piece of the body is joined
    or copied on the way (`FrameReader`, fed from an HTTP library, copies every chunk once
    more, and the library's own receive buffer another time). A length above ``max_frame`` is
    refused before anything is allocated for it; a body that ends inside a frame is refused
    too, since a truncated chunk must never pass for the end of the list. Each buffer is new,
    so a consumer may keep it."""
    head = bytearray(HEADER.size)
    head_view = memoryview(head)
    while True:
        got = fill(readinto, head_view)
        if got == 0:
            return
        if got < HEADER.size:
            raise BadRequest(f"the body ends inside a chunk frame's header ({got} of {HEADER.size} bytes)", code="truncated_body")
        raw, length = HEADER.unpack(head)
        if length > max_frame:
            raise frame_too_long(length, max_frame)
        data = bytearray(length)
        got = fill(readinto, memoryview(data))
        if got < length:
            raise BadRequest(f"the body ends inside a chunk frame ({got} of {length} bytes)", code="truncated_body")
        yield raw.hex(), data
