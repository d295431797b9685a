"""Per-file backoff for files still being written (`cubby.client.sync.settling`): which events
wake a pass, when a file being written is due to be read again, and that a scan does not read
again a file the previous scan found changing while one stat shows it still being written.

(The daemon as a whole, with a log written by another process, is in
`test_cli_and_resources.py`.)"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cubby.client.modes import mode_of
from cubby.client.sync.daemon import wait_for_work
from cubby.client.sync.scanner import ScanResult, scan
from cubby.client.sync.settling import QUIET, Fields, Settling, still_written
from cubby.client.sync.state import StateDb

SECOND = 1_000_000_000


def test_events_of_a_file_being_written_wake_nothing_and_push_its_time_on() -> None:
    s = Settling()
    assert not s.touched(("app.log",), 0.0) and s.due_in(0.0) is None  # nothing written: every event wakes
    s.found(["app.log", "dl/part.bin"], 10.0)
    assert s.due_in(10.0) == QUIET
    assert s.touched(("app.log",), 10.0 + QUIET / 2)
    assert s.due_in(10.0 + QUIET / 2) == QUIET / 2  # dl/part.bin, quiet since the pass
    assert s.touched(("dl/part.bin",), 10.0 + QUIET)
    assert s.due_in(10.0 + QUIET) == QUIET / 2  # app.log, quiet since its event
    assert s.due_in(10.0 + 2 * QUIET) == -QUIET / 2  # due: a pass reads it
    assert not s.touched(("note.txt",), 11.0)  # any other file wakes a pass at once
    assert not s.touched(("app.log", "app.log.1"), 11.0)  # a log rotated: a new name, a pass
    assert not s.touched((), 11.0)


def test_a_pass_sets_which_files_are_being_written() -> None:
    s = Settling()
    s.found(["app.log"], 0.0)
    s.touched(("app.log",), QUIET / 2)
    s.found(["app.log"], 2 * QUIET)  # read (or skipped) again by this pass: quiet from its end
    assert s.due_in(2 * QUIET) == QUIET
    s.found([], 3 * QUIET)  # it stood still and went up
    assert s.due_in(3 * QUIET) is None and not s.touched(("app.log",), 4 * QUIET)


def test_a_folder_modified_is_taken_in_only_for_the_folder_of_a_file_being_written() -> None:
    """watchdog reports a file's folder modified when the file is closed after a write."""
    s = Settling()
    s.found(["logs/app.log", "top.log"], 0.0)
    assert s.touched(("logs",), QUIET / 2, folders=True) and s.touched(("",), QUIET / 2, folders=True)
    assert s.due_in(QUIET / 2) == QUIET / 2  # (a folder's event moves no file's time on)
    assert not s.touched(("other",), QUIET / 2, folders=True)
    assert not s.touched(("logs/deeper",), QUIET / 2, folders=True)


def _fields(path: Path) -> Fields:
    st = os.lstat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino, mode_of(st))


def test_still_written_needs_a_change_since_last_seen_and_a_recent_mtime() -> None:
    now = 1_000 * SECOND
    seen = (100, now - SECOND // 2, 7, 0o644)
    grown = (200, now - SECOND // 10, 7, 0o644)
    assert still_written(grown, seen, now)
    assert not still_written(seen, seen, now)  # unchanged since: it has probably stopped
    assert not still_written((200, now - int(QUIET * SECOND), 7, 0o644), seen, now)  # quiet long enough
    assert not still_written((200, now + SECOND, 7, 0o644), seen, now)  # an mtime ahead says nothing


def test_a_scan_does_not_read_again_a_file_still_being_written(tmp_path: Path) -> None:
    """The previous scan found ``app.log`` changing (its fields after the read recorded); the
    log has grown since, just now: the scan reports it changing without reading it, and reads
    the file beside it. The log unchanged since that scan, or its last write `QUIET` seconds
    old, is read."""
    root = tmp_path / "root"
    root.mkdir()
    log, note = root / "app.log", root / "note.txt"
    log.write_bytes(b"line\n" * 1000)
    state = StateDb(tmp_path / "state.db")
    with ThreadPoolExecutor(2) as pool:
        seen = _fields(log)
        previous = ScanResult(changing=["app.log"], changing_seen={"app.log": seen})
        with open(log, "ab") as fh:
            fh.write(b"another line\n")
        note.write_bytes(b"saved beside it")
        res = scan(root, state, pool, previous=previous)
        assert res.changing == ["app.log"] and res.hashed == 1  # the note alone was read
        assert {i.rel: i.hash for i in res.items}["app.log"] is None
        assert res.changing_seen == {"app.log": _fields(log)}

        again = scan(root, state, pool, previous=res)  # no write since that look: read
        assert again.changing == [] and again.hashed == 1 and {i.rel: i.hash for i in again.items}["app.log"]

        with open(log, "ab") as fh:
            fh.write(b"one more\n")
        grown = _fields(log)
        st = os.stat(log)
        os.utime(log, ns=(st.st_atime_ns, time.time_ns() - int(QUIET * SECOND) - SECOND))
        quiet = scan(root, state, pool, previous=ScanResult(changing=["app.log"], changing_seen={"app.log": grown}))
        assert quiet.changing == [] and quiet.hashed == 1  # changed since, but quiet: read
    state.close()


def test_the_loop_wakes_for_an_event_or_a_file_gone_quiet() -> None:
    trigger = threading.Event()
    s = Settling()
    s.found(["app.log"], time.monotonic() - 2 * QUIET)
    assert wait_for_work(trigger, s, 60.0) is False  # quiet already: a pass, comparing the disk first
    s.found(["app.log"], time.monotonic())
    trigger.set()
    assert wait_for_work(trigger, s, 60.0) is True
    trigger.clear()
    assert wait_for_work(trigger, Settling(), 0.0) is False  # the safety net's time
