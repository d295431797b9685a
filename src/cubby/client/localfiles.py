"""Local files as the upload side sees them: a file named by its chunks (`LocalFile`, made by
`scan_file`), its stat stamp, and the walk of a local folder.

Kept apart from `cubby.client.upload` because the sync engine builds `LocalFile`s from its
state database (never rescanning) and only needs these types, not the upload pipeline.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cubby.client import modes
from cubby.core.chunking import MIN_SIZE, chunk_file, iter_chunks
from cubby.core.hashing import content_hash, sha256_hex
from cubby.errors import BadRequest, CubbyError
from cubby.model import ChunkRef

Progress = Callable[[int], None]
"""Called with a number of bytes done, as work advances (possibly from a worker thread)."""


class FileChanged(CubbyError):
    code = "file_changed"
    status = 409
    retryable = True


@dataclass(frozen=True)
class LocalChunk:
    offset: int
    size: int
    hash: str


Stamp = tuple[int, int, int, int]
"""(size, mtime_ns, ctime_ns, inode): any write to a file changes at least one of these."""


def stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass
class LocalFile:
    """A local file named for upload: where it is, its chunks, and what it was when hashed.

    ``stamp`` is the file's stat stamp while it was named (None: unknown, so its chunks are
    hashed again when read back); ``data`` is the whole file's bytes when they were kept."""

    local: Path
    remote: str
    size: int
    mtime: float
    chunks: list[LocalChunk]
    inode: int = 0
    stamp: Stamp | None = None
    data: bytes | None = field(default=None, repr=False)
    mode: int | None = None
    """`cubby.client.modes`: regular, executable, or a link (whose ``data`` is its target)."""

    @property
    def refs(self) -> tuple[ChunkRef, ...]:
        return tuple(ChunkRef(c.hash, c.size) for c in self.chunks)

    @property
    def content_hash(self) -> str:
        return content_hash(c.hash for c in self.chunks)


def scan_file(local: Path, remote: str, progress: Progress | None = None, *, keep_up_to: int = 0) -> LocalFile:
    """Name a file's chunks in one read. Files of at most ``keep_up_to`` bytes keep their bytes
    (`LocalFile.data`), so that an upload never reads them again."""
    local = local if isinstance(local, Path) else Path(local)  # Path(a Path) parses it again
    kept = _scan_kept(local, remote, progress, keep_up_to)
    if kept is not None:
        return kept
    st = local.stat()
    chunks: list[LocalChunk] = []
    for c in chunk_file(local, with_data=False):
        chunks.append(LocalChunk(c.offset, c.length, c.hash))
        if progress:
            progress(c.length)  # a large file's bar moves while it is hashed
    after = local.stat()
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise FileChanged(f"{local} changed while it was being read; try again when it is saved")
    stamp = stamp_of(after) if stamp_of(after) == stamp_of(st) else None
    return LocalFile(local, remote, st.st_size, st.st_mtime, chunks, st.st_ino, stamp, None, modes.mode_of(after))


def _scan_kept(local: Path, remote: str, progress: Progress | None, keep_up_to: int) -> LocalFile | None:
    """`scan_file` of a file of at most ``keep_up_to`` bytes, on one open descriptor: its stat
    before and after the read are ``fstat`` of that descriptor, so the bytes kept are those of
    the inode the stamp describes (a file renamed over it meanwhile is simply not this one),
    and a small file costs one open, two ``fstat`` and one read, where two path ``stat`` calls
    and the open of a path object cost as much again (most of a 4 KiB file's naming). None
    when the file is larger: the caller names it in pieces."""
    fd = os.open(local, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if st.st_size > keep_up_to:
            return None
        data = os.read(fd, st.st_size + 1)  # one byte more: a file that grew is caught below
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or len(data) != st.st_size:
        raise FileChanged(f"{local} changed while it was being read; try again when it is saved")
    chunks: list[LocalChunk]
    if 0 < len(data) <= MIN_SIZE:
        # FastCDC never cuts below MIN_SIZE, so such a file is one chunk: skip the chunker
        # (and its window allocation), which costs more than hashing a 4 KiB file.
        chunks = [LocalChunk(0, len(data), sha256_hex(data))]
    else:
        chunks = [LocalChunk(c.offset, c.length, c.hash) for c in iter_chunks(io.BytesIO(data), with_data=False)]
    if progress and chunks:
        progress(len(data))
    stamp = stamp_of(after)
    return LocalFile(
        local, remote, st.st_size, st.st_mtime, chunks, st.st_ino, stamp if stamp == stamp_of(st) else None, data,
        modes.mode_of(after),
    )


def walk(local_dir: Path) -> tuple[list[Path], list[Path]]:
    """Regular files and folders below ``local_dir`` (symlinks are not followed), in a stable
    order: `os.walk`'s, top down, names sorted. A listing's entry types say which is a regular
    file, so naming one costs no stat of its own (two per file, before)."""
    files: list[Path] = []
    dirs: list[Path] = []
    stack = [Path(local_dir)]
    while stack:
        root = stack.pop()
        try:
            with os.scandir(root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # as os.walk: a folder that cannot be listed is passed over
        below: list[Path] = []
        for e in entries:
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                dirs.append(root / e.name)
                if not e.is_symlink():
                    below.append(root / e.name)
            elif e.is_file(follow_symlinks=False):
                files.append(root / e.name)
        stack.extend(reversed(below))
    return files, dirs


def check_local_name(name: str) -> None:
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise BadRequest(f"refusing to write a local file named {name!r}")


