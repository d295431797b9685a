"""Local files as the upload side sees them: a file named by its chunks (`LocalFile`, made by
`scan_file`), its stat stamp, and the walk of a local folder.

Kept apart from `cubby.client.upload` because the sync engine builds `LocalFile`s from its
state database (never rescanning) and only needs these types, not the upload pipeline.
"""

from __future__ import annotations

import io
import os
import stat
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


class NotAFile(CubbyError):
    """What was to be uploaded as a file is a pipe, a socket or a device (reading one could
    wait or go on for ever)."""

    code = "special_file"
    status = 400


@dataclass(frozen=True)
class LocalChunk:
    offset: int
    size: int
    hash: str


LocalPath = str | Path
"""Where a local file is: a `Path`, or the text a folder's `walk` gives (a `Path` made per file
cost more than the walk itself, and hashing one as a dictionary key more than a string's)."""

Stamp = tuple[int, int, int, int]
"""(size, mtime_ns, ctime_ns, inode): any write to a file changes at least one of these."""


def stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass
class LocalFile:
    """A local file named for upload: where it is, its chunks, and what it was when hashed.

    ``stamp`` is the file's stat stamp while it was named (None: unknown, so its chunks are
    hashed again when read back); ``data`` is the whole file's bytes when they were kept."""

    local: LocalPath
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


def scan_file(local: LocalPath, remote: str, progress: Progress | None = None, *, keep_up_to: int = 0) -> LocalFile:
    """Name a file's chunks in one read. Files of at most ``keep_up_to`` bytes keep their bytes
    (`LocalFile.data`), so that an upload never reads them again."""
    kept = _scan_kept(local, remote, progress, keep_up_to)
    if kept is not None:
        return kept
    st = os.stat(local)
    chunks: list[LocalChunk] = []
    for c in chunk_file(local, with_data=False):
        chunks.append(LocalChunk(c.offset, c.length, c.hash))
        if progress:
            progress(c.length)  # a large file's bar moves while it is hashed
    after = os.stat(local)
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise FileChanged(f"{local} changed while it was being read; try again when it is saved")
    stamp = stamp_of(after) if stamp_of(after) == stamp_of(st) else None
    return LocalFile(local, remote, st.st_size, st.st_mtime, chunks, st.st_ino, stamp, None, modes.mode_of(after))


def _scan_kept(local: LocalPath, remote: str, progress: Progress | None, keep_up_to: int) -> LocalFile | None:
    """`scan_file` of a file of at most ``keep_up_to`` bytes, on one open descriptor: its stat
    before and after the read are ``fstat`` of that descriptor, so the bytes kept are those of
    the inode the stamp describes (a file renamed over it meanwhile is simply not this one),
    and a small file costs one open, two ``fstat`` and one read, where two path ``stat`` calls
    and the open of a path object cost as much again (most of a 4 KiB file's naming). None
    when the file is larger: the caller names it in pieces."""
    # Non-blocking: opening a named pipe would otherwise wait for a writer, for ever.
    fd = os.open(local, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a pipe, a socket or a device: no bytes to keep
            raise NotAFile(f"{local} is not a regular file (a pipe, socket or device): cubby uploads files and folders")
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


@dataclass(frozen=True)
class Skipped:
    """A local item a folder's upload left out, and why: ``code`` is ``symlink`` or
    ``special_file`` (what cubby does not store: links are not followed, and pipes, sockets and
    devices have no bytes to keep), ``unreadable`` (the folder could not be listed or the file
    not opened: it was *not* backed up) or ``vanished`` (removed while the upload ran)."""

    local: LocalPath
    code: str
    message: str

    @property
    def lost(self) -> bool:
        """Whether bytes that exist were left out (the upload is incomplete), not by design."""
        return self.code == "unreadable"

    def to_dict(self) -> dict[str, str]:
        return {"local": str(self.local), "code": self.code, "message": self.message}


def skipped_for(local: LocalPath, exc: OSError | NotAFile) -> Skipped:
    """What reading ``local`` failing with ``exc`` means for the upload."""
    if isinstance(exc, NotAFile):
        return Skipped(local, "special_file", "not a regular file (a pipe, socket or device)")
    if isinstance(exc, FileNotFoundError):
        return Skipped(local, "vanished", "removed while the upload ran")
    return Skipped(local, "unreadable", f"cannot be read: {exc.strerror or exc}")


def walk(local_dir: Path, on_skip: Callable[[Skipped], None] | None = None) -> tuple[list[str], list[str]]:
    """Regular files and folders below ``local_dir``, in a stable order: `os.walk`'s, top down,
    names sorted. A listing's entry types say which is a regular file, so naming one costs no
    stat of its own (two per file, before). Paths are given as text (`LocalPath`), each the
    listing's own (`os.DirEntry.path`): a `Path` per entry made the walk of 10,000 files three
    times as long (26 ms against 8), time in which a put had sent nothing yet.

    Everything else is left out and told to ``on_skip``: symbolic links (to files or folders:
    never followed), pipes, sockets and devices, and folders that cannot be listed (neither
    they nor anything in them is returned: an empty folder would say there was nothing to
    keep). ``local_dir`` itself must be listable (a `CubbyError` otherwise)."""
    top = os.fspath(local_dir)
    files: list[str] = []
    dirs: list[str] = []
    stack = [top]
    skip = on_skip or (lambda _s: None)
    while stack:
        root = stack.pop()
        try:
            with os.scandir(root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if root == top:
                raise CubbyError(f"cannot read {root}: {exc.strerror or exc}", code="unreadable") from exc
            dirs.remove(root)  # the last one added below its parent: listed, then found unreadable
            skip(skipped_for(root, exc))
            continue
        below: list[str] = []
        for e in entries:
            path = e.path
            try:
                if e.is_symlink():
                    skip(Skipped(path, "symlink", "a symbolic link: cubby stores files and folders, not links"))
                elif e.is_dir(follow_symlinks=False):
                    dirs.append(path)
                    below.append(path)
                elif e.is_file(follow_symlinks=False):
                    files.append(path)
                else:
                    skip(Skipped(path, "special_file", "not a regular file (a pipe, socket or device)"))
            except OSError as exc:
                skip(skipped_for(path, exc))
        stack.extend(reversed(below))
    return files, dirs


def lies_within(real: str, root: str) -> bool:
    """Whether ``real``, a path ``os.path.realpath`` gave (absolute, no ``.``, ``..`` or
    doubled separator), is ``root`` or below it: a prefix test on strings is then the
    ``parents`` test, without a `Path` per level. Case counts, as on the local disk."""
    return real == root or real.startswith(root.rstrip("/") + "/")


def check_local_name(name: str) -> None:
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise BadRequest(f"refusing to write a local file named {name!r}")


