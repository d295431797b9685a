"""`Writeback`: start a large file's trip to the disk while it is still being written, so that
the fsync that makes it durable at the end has little left to wait for.

Why: a machine with a few GiB of RAM keeps a whole 1 GiB download dirty in its page cache
(Linux begins writing back only past ``dirty_background_ratio``, 10% of memory), so the one
fsync at the end writes all of it while nothing else happens: about a second on this
project's machines, a quarter of a `cubby get` from Ceph RGW (bench/README.md). Every
``step`` bytes, an ``fdatasync`` of what is written so far runs on a thread of its own (one
at a time; the next waits for the one before), so the disk works while the network does.

This changes when bytes travel, never what is promised: the caller still fsyncs the file
before it names it (write-then-rename), and a failure of an early flush is left for that
final fsync to report (it fails the same way, or the bytes did reach the disk).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

STEP = 64 << 20
"""Bytes written between two early flushes: large enough that the flushes' own cost (a disk
cache flush each) is negligible, small enough that little is left for the last one."""

_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class Writeback:
    """Use as a context manager around writes to ``fd``; call `wrote` after each write. Leaving
    it waits for the flush in progress (the caller's own fsync follows). ``sync`` is what
    flushes (``os.fdatasync``; a test passes one that records its calls)."""

    def __init__(self, fd: int, step: int = STEP, sync: Callable[[int], None] = _datasync) -> None:
        self.fd = fd
        self.step = step
        self.sync = sync
        self._since = 0
        self._pool: ThreadPoolExecutor | None = None
        self._running: Future[None] | None = None

    def wrote(self, n: int) -> None:
        """``n`` more bytes were handed to the file (and reached the OS: flush any Python
        buffer first, or they are simply left for the final fsync)."""
        self._since += n
        if self._since < self.step or (self._running is not None and not self._running.done()):
            return
        self._since = 0
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="cubby-writeback")
        self._running = self._pool.submit(self._flush)

    def _flush(self) -> None:
        try:
            self.sync(self.fd)
        except OSError:
            pass  # the caller's final fsync reports it (see the module docstring)

    def close(self) -> None:
        """Wait for the flush in progress, if any."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> Writeback:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
