"""`cubby.core.durable.Writeback`: which ranges of a file written front to back are handed to
the disk early, and that the real `sync_file_range` call leaves the bytes as written."""

from __future__ import annotations

import os
from pathlib import Path

from cubby.core.durable import Writeback, start_writeback


def test_each_step_of_bytes_is_handed_to_the_disk_once_from_where_writes_began() -> None:
    calls: list[tuple[int, int, int]] = []
    disk = Writeback(7, offset=100, every=10, start=lambda *a: calls.append(a))
    for n in (4, 4, 4, 9, 1, 25):
        disk.wrote(n)
    # 100..112 after the third write, 112..122 after the fifth, 122..147 after the sixth
    assert calls == [(7, 100, 12), (7, 112, 10), (7, 122, 25)]


def test_the_real_call_changes_nothing_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(3 * 4096 + 17)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        disk = Writeback(fd, every=4096)
        for i in range(0, len(data), 1000):
            disk.wrote(os.write(fd, data[i : i + 1000]))
        start_writeback(fd, 0, 0)  # an empty range is no call
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
