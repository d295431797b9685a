"""`batched`: an iterable in lists of at most ``size`` items, as Python 3.12's
``itertools.batched`` gives them (cubby runs on 3.11 too). It lets a walk over something
large (every pack of a store, a whole object listing) hold one page at a time."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``items``, each ``size`` long but the last (never empty)."""
    if size < 1:
        raise ValueError(f"a batch holds at least one item, not {size}")
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch
