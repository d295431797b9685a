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
