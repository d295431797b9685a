"""`Writeback`: early flushes of a file being written, one at a time, waited for on leaving."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cubby.core.writeback import Writeback


def test_flushes_after_each_step_and_not_before(tmp_path: Path) -> None:
    calls: list[int] = []
    with open(tmp_path / "f", "wb", buffering=0) as fh, Writeback(fh.fileno(), step=10, sync=calls.append) as wb:
        fh.write(b"x" * 9)
        wb.wrote(9)
        wb.close()  # waits for a flush in progress: none was started below the step
        assert calls == []
        fh.write(b"x")
        wb.wrote(1)
        wb.close()
        assert calls == [fh.fileno()]
        fh.write(b"x" * 4)
        wb.wrote(4)
    assert len(calls) == 1  # 4 bytes since the last flush: below the step


def test_one_flush_at_a_time_and_leaving_waits_for_it(tmp_path: Path) -> None:
    release = threading.Event()
    running: list[int] = []
    done: list[int] = []

    def slow(fd: int) -> None:
        running.append(fd)
        release.wait(5)
        done.append(fd)

    with open(tmp_path / "f", "wb", buffering=0) as fh:
        wb = Writeback(fh.fileno(), step=1, sync=slow)
        for _ in range(5):
            fh.write(b"ab")
            wb.wrote(2)
        assert len(running) <= 1  # the others found one still running and did not queue
        release.set()
        wb.close()
        assert done == running and len(done) == 1


def test_a_failing_flush_is_raised_not_left_to_the_final_fsync(tmp_path: Path) -> None:
    """Linux reports a writeback error to one fsync only: swallowed here, the caller's final
    fsync could succeed over lost pages. So it is raised, on leaving or by the next write."""

    failed = threading.Event()

    def broken(fd: int) -> None:
        failed.set()
        raise OSError(5, "I/O error")

    with open(tmp_path / "f", "wb", buffering=0) as fh:
        with pytest.raises(OSError, match="I/O error"), Writeback(fh.fileno(), step=1, sync=broken) as wb:
            fh.write(b"data")
            wb.wrote(4)
        failed.clear()
        wb = Writeback(fh.fileno(), step=1, sync=broken)
        wb.wrote(1)
        assert failed.wait(5)
        with pytest.raises(OSError, match="I/O error"):
            for _ in range(1000):  # until the failed flush's thread has finished
                wb.wrote(0)
                time.sleep(0.005)
