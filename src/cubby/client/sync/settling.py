"""Files still being written: when the sync loop and the scanner look at them again.

A pass leaves alone a file that changed while it was read (`ScanResult.changing`): a log
appended to without a pause, a download in progress, a document being saved. Reading it again
at once only finds it changing again, and for a large file that is the whole file read for
nothing: a 64 MiB log appended to a hundred times a second, read on every write, kept the
daemon at half a core. Holding every pass back until the whole folder had been quiet (what the
loop did before) cost the other files instead: a document saved beside such a log waited up to
ten seconds, and the pass that took it read the whole log again. So the backoff is per file, in
two halves that agree on one number, `QUIET`:

- The loop (`SyncDaemon.run`) keeps a `Settling`: the paths the last pass found changing, each
  with when it last had a local event. An event for such a path only moves that time on and
  wakes no pass; an event for any other path wakes one at once, as when nothing is changing.
  Once a path has had no event for `QUIET` seconds a timer wakes a pass, which reads it and
  sends it if it now stands still. Quiet is judged by events, not by polling the file's stat:
  while the writes go on the loop does not wake at all, and events are what it wakes on anyway.
- The scanner (`still_written`) does not read again a file the previous scan found changing
  when one ``lstat`` shows it changed since that scan saw it and was last modified less than
  `QUIET` seconds ago: it is reported changing again, unread, so a pass run for another file
  costs the log one stat. Judged by the file's own stat, not by events, because the scanner has
  none: the mtime is the clock of the writes that any caller of a scan can read.

Neither half trusts the other blindly. An event lost, or a clock stepped, errs one of two ways:
a file read too soon is found changing again and costs one read, as every pass did before; a
file skipped when the loop's timer called for it is reported changing again, its quiet time
starts over, and the loop wakes `QUIET` seconds later for a pass that costs a stat.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

QUIET = 1.0
"""Seconds a file found changing must go without a write before it is read again."""

QUIET_NS = int(QUIET * 1e9)
"""`QUIET` in nanoseconds, an mtime's unit."""

Fields = tuple[int, int, int, int]
"""(size, mtime in ns, inode, mode) of a file, as the scanner compares it with the file index."""


def still_written(now: Fields, seen: Fields, clock_ns: int) -> bool:
    """Is a file that the previous scan found changing, whose fields were then ``seen`` and are
    ``now``, still being written at wall-clock time ``clock_ns``, so not worth reading yet?

    Yes when both hold. It changed since it was last seen: a file that has not has probably
    stopped (its last write overlapped the read that found it changing), and is read. And its
    mtime is less than `QUIET` old: the loop's timer wakes a pass `QUIET` seconds after the
    file's last event, and by then the mtime is at least that old, so that pass reads it.
    (Kernels stamp an mtime with a clock that lags, never leads, so it only looks older.) An
    mtime in the future (a clock stepped back, a file touched so) says nothing: it is read."""
    return now != seen and 0 <= clock_ns - now[1] < QUIET_NS


class Settling:
    """The loop's half (see the module docstring): the relative paths the last pass found
    changing, each with the monotonic time of its last event. Events come on the watcher's
    thread and passes end on the loop's, so a lock guards the one dict; it holds only the files
    being written at once, a handful."""

    __slots__ = ("_last", "_lock")

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def found(self, changing: Iterable[str], now: float) -> None:
        """After a pass: these paths are being written, no other is. Each is counted quiet from
        ``now``, not from its last event: the pass has just read it (or skipped it as still
        written), and looking again at once would read it again in a loop."""
        with self._lock:
            self._last = dict.fromkeys(changing, now)

    def touched(self, rels: Sequence[str], now: float, *, folders: bool = False) -> bool:
        """An event for ``rels`` (relative paths: a move has two) at ``now``. True when it is
        taken in here and must wake no pass: every path is one being written, whose quiet time
        starts again at ``now``.

        With ``folders``, ``rels`` are folders reported modified: taken in when each directly
        holds a file being written. watchdog reports a file's folder modified each time the
        file is closed after a write, so a log opened and closed for every line would wake a
        pass per line; and a name added, removed or moved in that folder comes with an event
        of its own, for its own path, which is not taken in. (The folder's own chmod, in those
        seconds, waits for the next pass or the safety-net scan.)"""
        with self._lock:
            if not self._last or not rels:
                return False
            if folders:
                return all(any(_parent(p) == f for p in self._last) for f in rels)
            if not all(r in self._last for r in rels):
                return False
            for r in rels:
                self._last[r] = now
            return True

    def due_in(self, now: float) -> float | None:
        """Seconds from ``now`` until the first file being written has been quiet for
        `QUIET` (zero or less: it has), or None when no file is being written. (No other
        length: a shorter one would wake passes that `still_written` skips the file in.)"""
        with self._lock:
            return min(self._last.values()) + QUIET - now if self._last else None


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]
