"""Files still being written (`cubby.client.sync.settling`): a scan does not read again a file
the previous scan found changing while one stat shows it still being written."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cubby.client.modes import mode_of
from cubby.client.sync.scanner import ScanResult, scan
from cubby.client.sync.settling import QUIET, Fields, still_written
from cubby.client.sync.state import StateDb

SECOND = 1_000_000_000


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
