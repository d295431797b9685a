"""The server's garbage-collector setting (`cubby.core.gcpolicy`): what start made is frozen,
young collections come less often, and cycles are still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from cubby.core.gcpolicy import YOUNG_THRESHOLD, tune_collector


@pytest.fixture
def collector_restored() -> Iterator[None]:
    """The test process's own collector as it was, afterwards (tests share the process)."""
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class Node:
    """A container that can sit in a cycle."""

    def __init__(self) -> None:
        self.other: object = None


def test_tuning_freezes_what_is_alive_and_raises_only_the_young_threshold(collector_restored: None) -> None:
    _, older, oldest = gc.get_threshold()
    tune_collector()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_THRESHOLD, older, oldest)


def test_a_cycle_made_after_tuning_is_still_collected_by_allocation_alone(collector_restored: None) -> None:
    """Nobody calls `gc.collect`: the allocations of a few batches bring a collection, which
    frees a cycle that reference counting cannot."""
    tune_collector(young=1_000)
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # a cycle: reference counting alone keeps it
    keep = [[] for _ in range(50_000)]  # container allocations, as a batch's rows are
    assert gone() is None
    del keep


def test_a_client_command_freezes_what_it_made_before_shutdown(tmp_path):
    """`freeze_at_exit`: by the time the interpreter shuts down, what the command left alive
    is out of the collector's sight (and a cycle's finaliser is left to the OS, as documented),
    while everything the command wrote is there."""
    import subprocess
    import sys

    script = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 1000, flush=True))\n"
        "from cubby.core.gcpolicy import freeze_at_exit\n"
        "freeze_at_exit()\n"
        "class Cycle:\n"
        "    def __del__(self): print('collected', flush=True)\n"
        "c = Cycle(); c.me = c; del c\n"
        f"open({str(tmp_path / 'out')!r}, 'w').write('written')\n"
        "print('done')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["done", "frozen", "True"]
    assert (tmp_path / "out").read_text() == "written"
