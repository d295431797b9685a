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
from collections.abc import Sequence
from concurrent.futures import Executor

import zstandard

from cubby.core.hashing import verify_chunk
from cubby.errors import CubbyError

RAW = 0
ZSTD = 1
LEVEL = 3
SAMPLE = 64 * 1024
MIN_SAVING = 0.10
"""Store compressed only when the sample shrinks by at least a tenth."""


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
        if 512 <= len(data) <= SAMPLE:
            # The sample would be the whole chunk: compress it once, at the stored level, and
            # keep it if it saves as much as a sample must (a small file was compressed twice).
            packed = self._ctx()[0].compress(data)
            if len(packed) <= len(data) * (1 - MIN_SAVING):
                return bytes((ZSTD,)) + packed
            return bytes((RAW,)) + bytes(data)
        if self.worth_compressing(data):
            comp, _, _ = self._ctx()
            packed = comp.compress(data)
            if len(packed) < len(data):
                return bytes((ZSTD,)) + packed
        return bytes((RAW,)) + bytes(data)

    def decode(self, blob: bytes) -> bytes:
        if not blob:
            raise CorruptChunk("stored chunk is empty")
        codec = blob[0]
        if codec == RAW:
            return blob[1:]
        if codec == ZSTD:
            _, _, dec = self._ctx()
            try:
                return dec.decompress(blob[1:])
            except zstandard.ZstdError as exc:
                raise CorruptChunk(f"stored chunk does not decompress: {exc}") from exc
        raise CorruptChunk(f"stored chunk has unknown codec {codec}")


SLICE_BYTES = 256 * 1024
"""Chunk bytes per task of `verify_and_encode` on an executor: a large chunk is a task of its
own, small ones go many to a task."""


def verify_and_encode(
    codec: Codec, jobs: Sequence[tuple[str, bytes, bool]], executor: Executor | None = None
) -> list[bytes | None]:
    """For each ``(name, data, is_new)``: verify ``data`` against ``name`` (`ChunkMismatch`
    before anything is returned), and encode it when it is new (None when not). A batch of a
    MiB or more runs on ``executor``: SHA-256 and zstd both release the GIL. It goes in slices
    of about `SLICE_BYTES`, not a task per chunk: for a 4 KiB chunk, a task (a future, a queue,
    a wake-up) costs more than hashing and encoding it."""

    def run(part: Sequence[tuple[str, bytes, bool]]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for name, data, is_new in part:
            verify_chunk(name, data)
            out.append(codec.encode(data) if is_new else None)
        return out

    if executor is None or len(jobs) < 2 or sum(len(d) for _, d, _ in jobs) < 1 << 20:
        return run(jobs)
    parts: list[Sequence[tuple[str, bytes, bool]]] = []
    start = size = 0
    for i, (_, data, _) in enumerate(jobs):
        size += len(data)
        if size >= SLICE_BYTES:
            parts.append(jobs[start : i + 1])
            start, size = i + 1, 0
    if start < len(jobs):
        parts.append(jobs[start:])
    return [blob for done in executor.map(run, parts) for blob in done]
