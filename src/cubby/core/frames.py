"""Chunk frames: how many chunks travel in one HTTP body, in either direction.

A body is a sequence of frames ``32-byte SHA-256 | 4-byte big-endian length | bytes``. The
reader is incremental (it is fed whatever the network delivers) and refuses a frame longer
than the largest chunk before buffering it, so a hostile length cannot make it allocate.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from cubby.core.chunking import MAX_SIZE
from cubby.errors import BadRequest, PayloadTooLarge

CONTENT_TYPE = "application/x-cubby-chunks"
HEADER = struct.Struct(">32sI")


def header(name: str, length: int) -> bytes:
    """The header of a frame of ``length`` bytes named ``name``; its bytes follow it."""
    return HEADER.pack(bytes.fromhex(name), length)


def encode(name: str, data: bytes) -> bytes:
    return header(name, len(data)) + data


def encode_many(items: Iterable[tuple[str, bytes]]) -> Iterator[bytes]:
    for name, data in items:
        yield header(name, len(data))
        yield data


class FrameReader:
    """Feed bytes in with `feed`; take complete (name, data) frames out of its return value."""

    def __init__(self, max_frame: int = MAX_SIZE) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: tuple[str, int] | None = None

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self._buf += data
        out: list[tuple[str, bytes]] = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER.size:
                    return out
                raw, length = HEADER.unpack_from(self._buf)
                if length > self.max_frame:
                    raise PayloadTooLarge(f"a chunk frame declares {length} bytes; the largest chunk is {self.max_frame}")
                self._need = (raw.hex(), length)
                del self._buf[: HEADER.size]
            name, length = self._need
            if len(self._buf) < length:
                return out
            # One copy through a view: bytes(self._buf[:length]) copies twice, and freeing the
            # 1 MiB temporary each time made glibc's allocator thrash (measured: ~0.6 GiB/s
            # against ~7 GiB/s this way), a fifth of the server's time in a large upload.
            with memoryview(self._buf) as view:
                data = bytes(view[:length])
            out.append((name, data))
            del self._buf[:length]
            self._need = None

    def close(self) -> None:
        """Call at end of body: a partial frame means the body was truncated."""
        if self._need is not None or self._buf:
            raise BadRequest("the body ends in the middle of a chunk frame (truncated upload?)", code="truncated_body")
