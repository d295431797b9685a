"""A zip archive written as a stream of byte strings, for downloading a folder.

The archive is produced while it is sent, a chunk at a time: nothing is built in memory or on
disk, so a folder of any size costs the memory of one chunk. The standard library's `zipfile`
does the format: given a file object that cannot seek (nor tell), it writes each member's sizes
and CRC in a data descriptor after the member's bytes, and Zip64 records when sizes or offsets
need them. Members are stored uncompressed: most large files are already compressed, and
storing keeps a download as fast as a plain file download.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cubby.model import ChunkRef


@dataclass(frozen=True)
class ZipMember:
    """A file (with its chunks, in order) or a folder, at ``name`` (``/``-separated, relative)."""

    name: str
    kind: str
    size: int = 0
    mtime: float | None = None
    chunks: tuple[ChunkRef, ...] = ()


class _Sink:
    """A write-only file without ``seek``/``tell``: what zipfile writes lands here until drained."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(data if isinstance(data, bytes) else bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def drain(self) -> bytes:
        parts, self.parts = self.parts, []
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _date_time(mtime: float | None) -> tuple[int, int, int, int, int, int]:
    """Zip timestamps are local-time fields from 1980 to 2107."""
    t = time.localtime(mtime if mtime is not None else time.time())[:6]
    if t[0] < 1980:
        return (1980, 1, 1, 0, 0, 0)
    if t[0] > 2107:
        return (2107, 12, 31, 23, 59, 58)
    return t  # type: ignore[return-value]


def zip_stream(members: Iterable[ZipMember], read_chunk: Callable[[str], bytes]) -> Iterator[bytes]:
    """Yield a zip archive of ``members`` piece by piece, reading each file's chunks with
    ``read_chunk(hash)`` only when the archive reaches them. Each piece is at most one chunk
    plus a few headers. ``members`` is consumed lazily, so it may itself be a paged listing."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for m in members:
            if m.kind == "folder":
                info = zipfile.ZipInfo(m.name.rstrip("/") + "/", _date_time(m.mtime))
                info.external_attr = (0o40755 << 16) | 0x10  # a directory, for unzip and Windows alike
                zf.writestr(info, b"")
            else:
                info = zipfile.ZipInfo(m.name, _date_time(m.mtime))
                info.external_attr = 0o100644 << 16
                info.file_size = m.size  # lets zipfile decide on Zip64 headers before the bytes come
                with zf.open(info, "w") as dest:
                    for c in m.chunks:
                        dest.write(read_chunk(c.hash))
                        piece = sink.drain()
                        if piece:
                            yield piece
            piece = sink.drain()
            if piece:
                yield piece
    tail = sink.drain()  # the central directory
    if tail:
        yield tail
