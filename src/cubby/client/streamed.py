"""Naming a large file in windows that can be sent while the rest is still being read.

Why. A large new file used to be named whole (FastCDC and a SHA-256 per chunk, over every
byte) before its first request: the commit that lists its chunks. Only then did the server
hear of it, and only then were the chunks read again, proven and uploaded. On the 2-core
machine that first pass was a second and a half of one busy core in which the server, and the
object store behind it, had nothing to do (a 1 GiB ``cubby put`` to Ceph RGW, 2026-12-06).
`StreamedFile` cuts the file into windows as it names it and hands each window over with its
bytes, so that its proofs are computed from the bytes just read and sent while the next window
is named (`cubby.client.upload.upload_file`); the commit comes last, once, when every chunk is
with the server.

The windows are proven before the commit, like a group of new small files
(`cubby.metadata.possession`: the nonces come from the namespace's proof key), so nothing is
sent that the server holds. What a proof costs the server (reading the held chunk back to
check it) is why this is for *new* files only, and why the caller stops offering windows once
the server is seen to hold most of one (`stop`): a copy of a file the user already has is
then committed first, as before, and the commit answer asks for nothing.

Memory: the window being named is held beside the chunker's buffer and the windows with the
server, where naming and sending used to take turns: a 1 GiB put peaked at 145-147 MB of RSS
against 119-121 MB (two rounds each, 2026-12-06), and took 5.7-6.0 s against 6.8-6.9 s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from cubby.client import modes
from cubby.client.localfiles import FileChanged, LocalChunk, LocalFile, Progress, stamp_of
from cubby.core.chunking import chunk_file


class ReadFailed(Exception):
    """Reading the file itself failed with ``cause`` (gone, unreadable, an I/O error): told
    apart from a network error, which is also an `OSError`, so that a folder's upload reports
    the file as skipped (`cubby.client.localfiles.skipped_for`) and never a dropped connection."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


Window = list[tuple[LocalChunk, bytes]]
"""Chunks of one window in file order, each with its bytes."""


class StreamedFile:
    """One large file, named window by window (`windows`); `named` is its `LocalFile` once the
    whole file has been read.

    ``provisional`` stands for the file while it is read: the stat stamp taken before the first
    byte, so that a window whose bytes were let go can be read again, trusted only while the
    file still shows that stamp (`cubby.client.upload._read_from` checks it before and after
    each read, as it does for a file named whole)."""

    def __init__(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        self.local = local
        self.remote = remote
        self.progress = progress
        try:
            st = os.stat(local)
        except OSError as exc:
            raise ReadFailed(exc) from exc
        self.before = st
        self.provisional = LocalFile(local, remote, st.st_size, st.st_mtime, [], st.st_ino, stamp_of(st), None, modes.mode_of(st))
        self.named: LocalFile | None = None

    def windows(self, limit: int, most_chunks: int, stop: Callable[[], bool]) -> Iterator[Window]:
        """Name the file, yielding its chunks a window at a time (about ``limit`` bytes, at
        most ``most_chunks`` chunks; a chunk seen earlier in the file is not offered again).
        Once ``stop()`` is true nothing more is offered, but the file is still named to its
        end: `named` lists every chunk. Raises `FileChanged` if the file changed meanwhile,
        `ReadFailed` if it could not be read."""
        try:
            yield from self._windows(limit, most_chunks, stop)
        except OSError as exc:  # raised by the file's reads: whatever the consumer raises stays there
            raise ReadFailed(exc) from exc

    def _windows(self, limit: int, most_chunks: int, stop: Callable[[], bool]) -> Iterator[Window]:
        chunks: list[LocalChunk] = []
        seen: set[str] = set()
        window: Window = []
        size = 0
        stopped = False
        for c in chunk_file(self.local, with_data=True):
            chunk = LocalChunk(c.offset, c.length, c.hash)
            chunks.append(chunk)
            if self.progress:
                self.progress(c.length)
            if stopped or c.hash in seen:
                continue
            seen.add(c.hash)
            window.append((chunk, c.data))
            size += c.length
            if size >= limit or len(window) >= most_chunks:
                stopped = stop()
                if not stopped:
                    yield window
                window, size = [], 0
        if window and not stopped and not stop():
            yield window
        del window
        after = os.stat(self.local)
        if (after.st_size, after.st_mtime_ns) != (self.before.st_size, self.before.st_mtime_ns):
            raise FileChanged(f"{self.local} changed while it was being read; try again when it is saved")
        stamp = stamp_of(after) if stamp_of(after) == stamp_of(self.before) else None
        self.named = LocalFile(
            self.local, self.remote, self.before.st_size, self.before.st_mtime, chunks, self.before.st_ino, stamp,
            None, modes.mode_of(after),
        )


__all__ = ["ReadFailed", "StreamedFile", "Window"]
