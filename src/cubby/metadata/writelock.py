"""`FileTurn`: the turn to write an SQLite database, between the processes of one machine.

Why. SQLite admits one writer at a time. A second process that asks (``BEGIN IMMEDIATE``)
while another writes waits in the driver's busy handler, which sleeps 1, 2, 5, 10, 15, 20,
25, 25, 25, 50, 50, then 100 ms between tries, however soon the lock is free: with
`cubby serve --workers N` on the embedded database, each worker's writes queued behind the
others' in those sleeps. Here writers of every process wait on an ``flock`` of a file beside
the database instead, tried again at most every `MAX_PAUSE` seconds, so a turn passes within
a millisecond or two of the last writer's COMMIT; SQLite's own lock is then free whenever a
writer holding the turn asks for it. A process that does not take the turn (a ``cubby``
command run beside the server) still meets SQLite's lock and its busy handler, as before.

The lock is the kernel's: a process that dies holding it (SIGKILL) loses it at once.
"""

from __future__ import annotations

import fcntl
import os
import time

from cubby.errors import Unavailable

FIRST_PAUSE = 0.0002
MAX_PAUSE = 0.002
"""Seconds between tries of a waiting writer: doubling from `FIRST_PAUSE` up to this."""


class FileTurn:
    """An exclusive ``flock`` of ``path`` (made if missing), taken by `take`, given by `give`.
    One holder per open file description: a process serialises its own threads before it
    asks (`cubby.metadata.engine.SoloWriter` holds its thread lock around the turn)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def take(self, wait: float) -> None:
        """Wait up to ``wait`` seconds for the turn; `Unavailable` when another process kept it."""
        deadline = time.monotonic() + wait
        pause = FIRST_PAUSE
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if time.monotonic() >= deadline:
                raise Unavailable("the metadata database is busy; retry shortly")
            time.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)

    def give(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


__all__ = ["FileTurn"]
