"""Durable writes, shared by the block store and the client: what makes bytes and names survive
a crash, and how to pay for it once per batch rather than once per file.

A file is durable once its bytes are fsynced and its name (the directory entry) is fsynced
too. Thousands of small files each fsynced twice cost thousands of disk flushes; `barrier`
instead makes everything written so far on a file system durable at once (``syncfs`` on
Linux), falling back to an fsync of each given path (or ``sync()``) elsewhere. The pattern
every writer follows: write temp files, one barrier, rename them into place, one barrier.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


@functools.cache
def load_syncfs() -> Any:
    """libc's ``syncfs``, or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syncfs
        fn.argtypes = [ctypes.c_int]
        return fn
    except (OSError, AttributeError):
        return None


WRITE_PIECE = 1 << 20
"""Bytes handed to one ``write`` call by `write_all`. Measured on this project's machines
(ext4, bench/README.md): 16 MiB packs written in one call cost 5x the CPU of the same bytes
written 1 MiB at a time (0.43 s against 0.09 s of system time for 256 MiB, fsync included),
so large writes are cut into pieces of this size."""


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd``, `WRITE_PIECE` bytes per call (short writes resumed)."""
    with memoryview(data) as view:
        pos, end = 0, len(view)
        while pos < end:
            pos += os.write(fd, view[pos : min(end, pos + WRITE_PIECE)])


SYNC_FILE_RANGE_WRITE = 2
"""Linux's flag for "start writing these pages to disk, do not wait" (``<linux/fs.h>``)."""


@functools.cache
def load_sync_file_range() -> Any:
    """libc's ``sync_file_range`` (Linux), or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        return fn
    except (OSError, AttributeError):
        return None


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes of ``fd`` at ``offset`` to the disk now,
    without waiting for them; a no-op where ``sync_file_range`` does not exist.

    This is not durability (the fsync that follows still is): it only moves the disk's work
    earlier. A large object written and then fsynced makes the writer wait for all of it at
    the fsync; started piece by piece as it is written, the disk works while the writer
    copies the rest, and the fsync waits only for the tail. Errors are left to that fsync."""
    fn = load_sync_file_range()
    if fn is not None and length > 0:
        fn(fd, offset, length, SYNC_FILE_RANGE_WRITE)


WRITEBACK_EVERY = 4 * 1024 * 1024
"""Bytes written between two requests to the disk to start writing (`start_writeback`).
Measured on this machine (bench/README.md, branch ingest): 32 packs of 16 MiB written and
fsynced waited 1.63-1.70 s in their fsyncs, 0.96-0.98 s with writeback started every 4 MiB;
a 1 GiB download's final fsync waited 0.9-2.2 s with none (branch cephio)."""


class Writeback:
    """Starts the disk's writeback of what was written to ``fd`` every ``every`` bytes
    (`start_writeback`), for a file written front to back: call `wrote` after each write that
    reached the OS (a Python buffer's bytes are simply left for the final fsync). Nothing here
    waits or can fail: the caller's fsync, before the file is named, is still the durability."""

    def __init__(
        self, fd: int, offset: int = 0, every: int = WRITEBACK_EVERY, start: Callable[[int, int, int], None] | None = None
    ) -> None:
        """``offset``: where in the file the writes begin (a resumed download)."""
        self.fd = fd
        self.every = every
        self._start = start_writeback if start is None else start
        self._pos = self._started = offset

    def wrote(self, n: int) -> None:
        self._pos += n
        if self._pos - self._started >= self.every:
            self._start(self.fd, self._started, self._pos - self._started)
            self._started = self._pos


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the names in folder ``path`` durable (after a create, rename or unlink in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_then_rename(
    path: str | os.PathLike[str], tmp: str | os.PathLike[str], write: Callable[[int], object], mode: int = 0o600
) -> None:
    """Put a file at ``path`` whole or not at all, durably: ``write`` fills the temporary file
    ``tmp`` (on the same file system) through its descriptor, which is fsynced, renamed over
    ``path``, and the rename made durable. On any failure the temporary file is removed and
    ``path`` is as it was. One protocol for every file cubby must not leave half-written."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            write(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(os.fspath(path)) or ".")


def replace_file(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` whole or not at all, durably (`write_then_rename`, through a
    temporary file beside it): a small record a crash must not leave half-written."""
    write_then_rename(path, path.with_name(f".{path.name}.{os.getpid()}.tmp"), lambda fd: write_all(fd, data))


def barrier(anchor: Path, paths: Iterable[Path] | None = None) -> None:
    """Make everything written so far on ``anchor``'s file system durable: one ``syncfs``;
    failing that, an fsync of each of ``paths`` (files or folders), or ``sync()`` if none
    are given."""
    fn = load_syncfs()
    if fn is not None:
        fd = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if fn(fd) == 0:
                return
        finally:
            os.close(fd)
    if paths is None:
        os.sync()
        return
    for p in paths:
        fd = os.open(p, os.O_RDONLY | (os.O_DIRECTORY if p.is_dir() else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
