"""`Writeback`: start a large file's trip to the disk while it is still being written, so that
the fsync that makes it durable at the end has little left to wait for.

Why: a machine with a few GiB of RAM keeps a whole 1 GiB download dirty in its page cache
(Linux begins writing back only past ``dirty_background_ratio``, 10% of memory), so the one
fsync at the end writes all of it while nothing else happens: about a second on this
project's machines, a quarter of a `cubby get` from Ceph RGW (bench/README.md). Every
``step`` bytes, an ``fdatasync`` of what is written so far runs on a thread of its own (one
at a time; the next waits for the one before), so the disk works while the network does.

This changes when bytes travel, never what is promised: the caller still fsyncs the file
before it names it (write-then-rename). A failure of an early flush is raised, by the next
`wrote` or on leaving, and never left for that final fsync to find: Linux reports a
writeback error to one fsync of a file description only, so after a failed early flush the
final fsync could succeed although the pages it should have written were dropped.
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
        running = self._running
        if running is not None and running.done():
            running.result()  # an early flush failed: the file's bytes may be lost
        if self._since < self.step or (running is not None and not running.done()):
            return
        self._since = 0
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="cubby-writeback")
        self._running = self._pool.submit(self._flush)

    def _flush(self) -> None:
        self.sync(self.fd)

    def close(self) -> None:
        """Wait for the flush in progress, if any, and raise its error."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        running, self._running = self._running, None
        if running is not None:
            running.result()

    def __enter__(self) -> Writeback:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
            return
        try:
            self.close()
        except OSError:
            pass  # the error already on its way out matters more; the part file is not named

