"""Chunk compression: zstd where it pays, raw where it does not.

A stored chunk is one codec byte and a payload: ``0x00`` raw, ``0x01`` zstd. Deciding is cheap:
a 64 KiB sample from the middle of the chunk is compressed at zstd's fastest level first, and
only a chunk whose sample shrinks by at least `MIN_SAVING` is compressed whole. Random or
already-compressed data (media, archives) therefore costs one small sample, not a full pass.
A chunk no larger than the sample is compressed once, at the stored level, and kept so when it
shrinks by as much.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor

import zstandard

from cubby.core.hashing import Sha256State, verify_chunk
from cubby.errors import CubbyError

RAW = 0
ZSTD = 1
LEVEL = 1
"""zstd's fastest standard level. Compression is the largest CPU cost of storing text (it was
more than half of the core's CPU on text at level 3, in a profile of bench/ingest.py), and the server pays it for every new
chunk of every user. Measured on 1 MiB chunks (2026-12-02, bench/README.md): Python source
code level 1 408 MB/s, ratio 0.224 / level 3 287 MB/s, 0.206 (9% larger for 1.4x the speed);
bench/ingest.py's synthetic text 340 MB/s, 0.498 / 177 MB/s, 0.375. A store that prefers
space passes ``Codec(level=3)``; chunks of any level decode alike."""
SAMPLE = 64 * 1024
MIN_SAVING = 0.10
"""Store compressed only when the sample shrinks by at least a tenth."""


MANY_AT_ONCE = "multi_compress_to_buffer" in getattr(zstandard, "backend_features", ())
"""Whether this zstandard can compress a list of inputs in one call (`Codec.encode_many`):
its C backend with the bundled zstd, as PyPI's wheels are; built against a system zstd, or
on the CFFI backend, it cannot, and each chunk is compressed alone, as before."""

_RAW_BYTE = bytes((RAW,))
_ZSTD_BYTE = bytes((ZSTD,))

Stored = tuple[bytes, "bytes | memoryview"]
"""A stored chunk in two parts, its codec byte(s) and its payload (see `Codec.encode_parts`);
its stored bytes are the two concatenated."""


def _saves(packed: int, data: bytes | memoryview) -> bool:
    """Whether a chunk compressed whole into ``packed`` bytes is kept so: it saves as much as
    a sample must (`MIN_SAVING`)."""
    return packed <= len(data) * (1 - MIN_SAVING)


def stored_len(stored: Stored) -> int:
    return len(stored[0]) + len(stored[1])


class CorruptChunk(CubbyError):
    code = "corrupt_chunk"
    status = 500


class Codec:
    """Compressor and decompressor objects are not thread-safe, so each thread keeps its own."""

    def __init__(self, level: int = LEVEL) -> None:
        self.level = level
        self._local = threading.local()

    def _ctx(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = (
                zstandard.ZstdCompressor(level=self.level),
                zstandard.ZstdCompressor(level=1),
                zstandard.ZstdDecompressor(),
            )
            self._local.ctx = ctx
        return ctx

    def worth_compressing(self, data: bytes | memoryview) -> bool:
        if len(data) < 512:
            return False
        _, fast, _ = self._ctx()
        start = max(0, len(data) // 2 - SAMPLE // 2)
        sample = data[start : start + SAMPLE]
        return len(fast.compress(sample)) <= len(sample) * (1 - MIN_SAVING)

    def encode(self, data: bytes | memoryview) -> bytes:
        """The stored form of ``data``: its codec byte, then its payload."""
        return b"".join(self.encode_parts(data))

    def encode_parts(self, data: bytes | memoryview) -> Stored:
        """The stored form of ``data`` as its codec byte and its payload, apart: a raw chunk's
        payload is ``data`` itself, so that a writer putting many chunks into one object
        (a pack) copies each once, into that object, instead of once more to prepend a byte."""
        if 512 <= len(data) <= SAMPLE:
            # The sample would be the whole chunk: compress it once, at the stored level, and
            # keep it if it saves as much as a sample must (a small file was compressed twice).
            packed = self._ctx()[0].compress(data)
            if _saves(len(packed), data):
                return _ZSTD_BYTE, packed
            return _RAW_BYTE, data
        if self.worth_compressing(data):
            comp, _, _ = self._ctx()
            packed = comp.compress(data)
            if len(packed) < len(data):
                return _ZSTD_BYTE, packed
        return _RAW_BYTE, data

    def encode_many(self, datas: Sequence[bytes | memoryview | None]) -> list[Stored | None]:
        """`encode_parts` of each of ``datas`` (None for None), the small ones compressed in
        one call.

        Why one call. zstd lets go of the GIL while it compresses, and a thread that let go
        must win it back, which beside a thread running Python takes up to the switch interval
        (5 ms; `bench/gil_handoff.py`). A 4 KiB chunk takes 3 us to compress, so a batch of
        small chunks, each compressed alone, spent almost all its time waiting: 64 random
        chunks of 4 KiB took 0.17 ms alone and 91 ms beside a busy thread, against 5.4 ms
        in one ``multi_compress_to_buffer`` call. The bytes are those `encode_parts` makes
        (the same frame, level and rule for keeping it)."""
        out: list[Stored | None] = [None] * len(datas)
        small = [(i, d) for i, d in enumerate(datas) if d is not None and 512 <= len(d) <= SAMPLE]
        if MANY_AT_ONCE and len(small) > 1:
            packed = self._ctx()[0].multi_compress_to_buffer([d for _, d in small])
            for k, (i, data) in enumerate(small):
                segment = packed[k]
                if _saves(len(segment), data):
                    out[i] = (_ZSTD_BYTE, segment.tobytes())
                else:
                    out[i] = (_RAW_BYTE, data)
        for i, rest in enumerate(datas):
            if rest is not None and out[i] is None:
                out[i] = self.encode_parts(rest)
        return out

    def decode(self, blob: bytes | memoryview) -> bytes:
        """The plaintext of a stored chunk. ``blob`` may be a view into a larger read (an
        extent of a pack): the payload is then copied once, into the plaintext, and no more."""
        if not blob:
            raise CorruptChunk("stored chunk is empty")
        codec = blob[0]
        payload = memoryview(blob)[1:]
        if codec == RAW:
            return bytes(payload)
        if codec == ZSTD:
            _, _, dec = self._ctx()
            try:
                return dec.decompress(payload)
            except zstandard.ZstdError as exc:
                raise CorruptChunk(f"stored chunk does not decompress: {exc}") from exc
        raise CorruptChunk(f"stored chunk has unknown codec {codec}")


SLICE_BYTES = 256 * 1024
"""Chunk bytes per task of `verify_and_encode` on an executor: a large chunk is a task of its
own, small ones go many to a task."""


def verify_and_encode(
    codec: Codec, jobs: Sequence[tuple[str, bytes, bool]], executor: Executor | None = None
) -> list[Stored | None]:
    """For each ``(name, data, is_new)``: verify ``data`` against ``name`` (`ChunkMismatch`
    before anything is returned), and encode it (`Codec.encode_parts`) when it is new (None
    when not). See `iter_verify_and_encode`, of which this is the whole list."""
    return list(iter_verify_and_encode(codec, jobs, executor))


def iter_verify_and_encode(
    codec: Codec,
    jobs: Sequence[tuple[str, bytes, bool]],
    executor: Executor | None = None,
    states: dict[str, Sha256State] | None = None,
) -> Iterator[Stored | None]:
    """`verify_and_encode`'s results in order, a slice of about `SLICE_BYTES` at a time, so
    that a writer can store the first chunks while the next are verified; a chunk that does
    not match its name raises `ChunkMismatch` where its slice's results would come (after
    every earlier slice's). A batch of a MiB or more runs on ``executor``: SHA-256 and zstd
    both release the GIL. A slice, not a task per chunk: for a 4 KiB chunk, a task (a future,
    a queue, a wake-up) costs more than hashing and encoding it; and a slice's small chunks
    are compressed in one call (`Codec.encode_many`).

    ``states``, when given, receives each chunk's SHA-256 hasher (`verify_chunk`'s) by name,
    before the chunk's result is yielded: a raw chunk's payload is its plaintext, so a writer
    that must hash it again (a pack's signed S3 PUT, `cubby.blockstore.s3chunked`) need not."""

    def run(part: Sequence[tuple[str, bytes, bool]]) -> list[Stored | None]:
        for name, data, _ in part:
            state = verify_chunk(name, data)
            if states is not None:
                states[name] = state
        return codec.encode_many([data if is_new else None for _, data, is_new in part])

    parts: list[Sequence[tuple[str, bytes, bool]]] = []
    start = size = 0
    for i, (_, data, _) in enumerate(jobs):
        size += len(data)
        if size >= SLICE_BYTES:
            parts.append(jobs[start : i + 1])
            start, size = i + 1, 0
    if start < len(jobs):
        parts.append(jobs[start:])
    if executor is None or len(parts) < 2 or sum(len(d) for _, d, _ in jobs) < 1 << 20:
        for part in parts:
            yield from run(part)
        return
    for done in executor.map(run, parts):
        yield from done
