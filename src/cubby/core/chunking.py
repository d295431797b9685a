"""Content-defined chunking with FastCDC (the compiled `pyfastcdc`), streaming.

Cut points depend on the bytes around them, not on offsets, so inserting or deleting a few
bytes changes only the chunks around the edit and every other chunk keeps its name: this is
what makes a one-byte edit of a large file cost one or two chunks on the wire.

Memory stays bounded: `iter_chunks` reads the stream in windows of a few maximum-size chunks,
cuts them with FastCDC and carries only the unfinished tail over to the next window.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from pyfastcdc import FastCDC

MIN_SIZE = 256 * 1024
"""No chunk is smaller, except the last chunk of a file (or a whole small file)."""
AVG_SIZE = 1024 * 1024
"""The target mean chunk size."""
MAX_SIZE = 4 * 1024 * 1024
"""No chunk is larger: the unit the server reads, verifies and stores in one piece."""

# pyfastcdc's mean is its avg_size argument plus min_size (cut-point skipping), so ask for the
# difference to get a true mean of AVG_SIZE.
_FASTCDC_AVG = AVG_SIZE - MIN_SIZE
_WINDOW = 4 * MAX_SIZE


class Reader(Protocol):
    def readinto(self, buffer: bytearray | memoryview) -> int | None: ...


@dataclass(frozen=True)
class Chunk:
    offset: int
    length: int
    hash: str
    data: bytes


def _chunker() -> FastCDC:
    return FastCDC(_FASTCDC_AVG, min_size=MIN_SIZE, max_size=MAX_SIZE)


_SHARED = threading.local()


def _shared_chunker() -> FastCDC:
    """FastCDC objects are not safe to share between threads, but are cheap to reuse in one."""
    cdc = getattr(_SHARED, "cdc", None)
    if cdc is None:
        cdc = _SHARED.cdc = _chunker()
    return cdc


def iter_chunks(reader: BinaryIO | Reader, *, with_data: bool = True) -> Iterator[Chunk]:
    """Cut a stream into content-defined chunks, in order, reading at most a few MiB at a time.

    With ``with_data=False`` the chunks carry no bytes (``data == b""``), for a first pass that
    only needs names and sizes. The concatenation of the chunks' data is the stream.
    """
    cdc = _shared_chunker()
    # Start small and grow: a small file should not cost a 20 MiB allocation.
    buf = bytearray(256 * 1024)
    filled = 0
    base = 0  # stream offset of buf[0]
    eof = False
    while True:
        while not eof and filled < _WINDOW:
            if filled == len(buf):
                bigger = bytearray(min(2 * len(buf), _WINDOW + MAX_SIZE))
                bigger[:filled] = buf
                buf = bigger
            view = memoryview(buf)[filled:]
            n = reader.readinto(view)
            if not n:
                eof = True
            else:
                filled += n
        if filled == 0:
            return
        view = memoryview(buf)[:filled]
        consumed = 0
        for c in cdc.cut_buf(view):
            end = c.offset + c.length
            if not eof and end == filled:
                break  # the last cut of a window is not final: more bytes may extend it
            piece = view[c.offset : end]
            yield Chunk(
                offset=base + c.offset,
                length=c.length,
                hash=hashlib.sha256(piece).hexdigest(),
                data=bytes(piece) if with_data else b"",
            )
            consumed = end
        if eof and consumed == filled:
            return
        rest = filled - consumed
        buf[:rest] = buf[consumed:filled]
        filled = rest
        base += consumed
        if eof and consumed == 0 and rest:
            # Nothing cut and nothing more to read: cannot happen (the final window always
            # yields through its end), but never loop forever on a broken reader.
            raise RuntimeError("chunker made no progress at end of stream")


def chunk_file(path: str | os.PathLike[str], *, with_data: bool = True) -> Iterator[Chunk]:
    """Chunk a file on disk; see `iter_chunks`."""
    with Path(path).open("rb", buffering=0) as fh:
        yield from iter_chunks(fh, with_data=with_data)


def chunk_bytes(data: bytes) -> list[Chunk]:
    """Chunk an in-memory buffer (tests and small files)."""
    import io

    return list(iter_chunks(io.BytesIO(data)))
