"""Content-defined chunking with FastCDC (the compiled `pyfastcdc`), streaming.

Cut points depend on the bytes around them, not on offsets, so inserting or deleting a few
bytes changes only the chunks around the edit and every other chunk keeps its name: this is
what makes a one-byte edit of a large file cost one or two chunks on the wire and on disk.

Memory stays bounded: `iter_chunks` reads the stream into a window of `WINDOW` bytes, cuts it
with FastCDC and carries only the unfinished last chunk over to the next window, so a 20 GiB
file never has more than a window plus the chunks its consumer still holds in memory.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from cubby.core.hashing import Buffer, hash_many, sha256_hex

if TYPE_CHECKING:
    from pyfastcdc import FastCDC

MIN_SIZE = 256 * 1024
"""No chunk is smaller, except the last chunk of a stream (or a whole small file)."""
AVG_SIZE = 1024 * 1024
"""The intended mean chunk size (measured on random data: about 0.95 MiB)."""
MAX_SIZE = 4 * 1024 * 1024
"""No chunk is larger: the unit the server reads, verifies and stores in one piece."""
MIN_DIRECT = 8 * 1024
"""The smallest chunk a client puts into a pack of its own, straight to the bucket
(`cubby.blockstore.directput`): each is one chunk of a body signed in chunks, and S3 refuses
such a chunk under 8 KiB but the last. Smaller ones (small files) go through the blocks role."""

NORMALIZATION: Literal[0, 1, 2, 3] = 2
"""FastCDC's normalized-chunking level. 2 (the paper's recommendation) keeps sizes close to
the mean (on random data 90% of chunks are 0.65-1.3 MiB, against 0.45-1.8 MiB at level 1),
which evens out the work per chunk, at no measurable cost in edit locality."""

# pyfastcdc documents its mean as ``avg_size + min_size`` (cut-point skipping). It also rounds
# the cut mask to a power of two, so the real mean is measured rather than computed: asking
# for AVG_SIZE - MIN_SIZE gives about 0.95 MiB at level 2 (1.08 MiB at level 1), the nearest
# it gets to AVG_SIZE. The constants test checks the measured mean stays near AVG_SIZE.
_FASTCDC_AVG = AVG_SIZE - MIN_SIZE

WINDOW = 2 * MAX_SIZE
"""Bytes read and cut at a time. At least one maximum chunk must fit after the carried-over
tail; a bigger window would only cost memory."""


@runtime_checkable
class ReadInto(Protocol):
    """A binary stream we can fill a buffer from (files, sockets, `io.RawIOBase`)."""

    def readinto(self, buffer: bytearray | memoryview, /) -> int | None: ...


@runtime_checkable
class Read(Protocol):
    """A binary stream that only hands out bytes objects (some wrappers, generators)."""

    def read(self, size: int = ..., /) -> bytes: ...


Reader = ReadInto | Read


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a stream: where it is, how long, its name, and (unless asked not to) its bytes."""

    offset: int
    length: int
    hash: str
    data: bytes


def new_chunker() -> FastCDC:
    """A FastCDC cutter with cubby's parameters; every chunk boundary in cubby comes from here.
    pyfastcdc is imported here, at the first cutter, not with this module: a command that
    chunks nothing (a put of files no larger than `MIN_SIZE`, which are one chunk each, or a
    listing) starts 6 ms sooner without it and the typing_extensions it brings."""
    from pyfastcdc import FastCDC

    return FastCDC(_FASTCDC_AVG, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=NORMALIZATION)


_PER_THREAD = threading.local()


def _thread_chunker() -> FastCDC:
    """FastCDC objects must not be shared between threads, but one thread may reuse its own."""
    cdc: FastCDC | None = getattr(_PER_THREAD, "cdc", None)
    if cdc is None:
        cdc = _PER_THREAD.cdc = new_chunker()
    return cdc


class _Fill(Protocol):
    def __call__(self, view: memoryview, /) -> int: ...


def _filler(reader: Reader) -> _Fill:
    """Adapt ``reader`` to "fill this view, return how many bytes" (0 at end of stream)."""
    if isinstance(reader, ReadInto):
        readinto = reader.readinto

        def fill(view: memoryview) -> int:
            return readinto(view) or 0

        return fill
    read = reader.read

    def fill_from_read(view: memoryview) -> int:
        data = read(len(view))
        view[: len(data)] = data
        return len(data)

    return fill_from_read


def iter_chunks(
    reader: Reader, *, with_data: bool = True, executor: Executor | None = None
) -> Iterator[Chunk]:
    """Cut a stream into content-defined chunks, in order, holding at most `WINDOW` bytes.

    The concatenation of the chunks' data is the stream, and the chunks do not depend on how
    the reader splits its reads. With ``with_data=False`` the chunks carry no bytes
    (``data == b""``), for a pass that only needs names and sizes. With an ``executor``, the
    chunks of each window are hashed on its threads (SHA-256 releases the GIL), which pays
    once hashing, not reading, is what limits throughput.
    """
    cdc = _thread_chunker()
    fill = _filler(reader)
    # Start small and grow: a small file should not cost an 8 MiB allocation.
    buf = bytearray(min(256 * 1024, WINDOW))
    filled = 0
    base = 0  # stream offset of buf[0]
    eof = False
    while True:
        while not eof and filled < WINDOW:
            if filled == len(buf):
                bigger = bytearray(min(2 * len(buf), WINDOW))
                bigger[:filled] = buf
                buf = bigger
            n = fill(memoryview(buf)[filled:])
            if n <= 0:
                eof = True
            else:
                filled += n
        if filled == 0:
            return
        view = memoryview(buf)[:filled]
        spans: list[tuple[int, int]] = []
        for c in cdc.cut_buf(view):
            end = c.offset + c.length
            if not eof and end == filled:
                # The last cut of a window is provisional: the bytes after the window may move
                # it. It is cut again, from its start, once the next window is read.
                break
            spans.append((c.offset, end))
        pieces = [view[s:e] for s, e in spans]
        names = hash_many(pieces, executor)
        for (start, end), piece, name in zip(spans, pieces, names):
            yield Chunk(base + start, end - start, name, bytes(piece) if with_data else b"")
        del pieces
        consumed = spans[-1][1] if spans else 0
        view.release()
        if eof:
            return  # at end of stream every cut is final, so everything was yielded
        rest = filled - consumed
        buf[:rest] = buf[consumed:filled]
        filled = rest
        base += consumed


def chunk_file(
    path: str | os.PathLike[str], *, with_data: bool = True, executor: Executor | None = None
) -> Iterator[Chunk]:
    """Chunk a file on disk, streaming; see `iter_chunks`.

    A file of at most `MIN_SIZE` bytes is one chunk (FastCDC never cuts below it), so it is
    read in one call and hashed, without the chunker and its window: for a 4 KiB file those
    cost several times the hashing (the sync scan of a tree of small files names each so)."""
    with open(path, "rb", buffering=0) as fh:
        if os.fstat(fh.fileno()).st_size <= MIN_SIZE:
            data = fh.read(MIN_SIZE + 1)  # one byte more: a file that grew is chunked below
            if len(data) <= MIN_SIZE:
                if data:
                    yield Chunk(0, len(data), sha256_hex(data), data if with_data else b"")
                return
            fh.seek(0)
        try:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass  # only a read-ahead hint
        yield from iter_chunks(fh, with_data=with_data, executor=executor)


def chunk_bytes(data: Buffer, *, executor: Executor | None = None) -> list[Chunk]:
    """Chunk a buffer already in memory: the same chunks `iter_chunks` gives for its bytes."""
    return list(iter_chunks(io.BytesIO(data), executor=executor))
