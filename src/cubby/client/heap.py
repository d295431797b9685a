"""How the client keeps Python's cyclic garbage collector off its long-lived objects.

A sync pass or a tree upload holds a few objects per file (scanned items, trees, records, the
files named) for its whole length, none of them in a cycle; each full collection the
allocations start walks them all again and frees nothing. Reference counting still frees
everything as usual: these only change which objects the collector looks at, and when.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while a pass scans and plans.

    Those steps make a few objects per item of every tree (tens of thousands), all alive
    until the plan is made and none in a cycle: a collection in between frees nothing, yet
    each one started by the allocations walks the young objects, and the older ones walk the
    whole heap. (Measured on a no-op pass over 7,700 files: 130 collections, a quarter of its
    time.) Reference counting still frees everything as usual; the collector resumes after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


YOUNG_THRESHOLD = 20_000
"""Allocations between two collections of the youngest generation while a plan is applied
(Python's default is 700): `gc_frozen`."""


@contextmanager
def gc_frozen() -> Iterator[None]:
    """Keep the objects alive now out of the cyclic garbage collector's walks while a plan is
    applied (`gc.freeze`), and give them back after.

    By then the scan, both trees and the plan are a few objects per item of every tree, all
    alive until the pass ends; each collection of the oldest generation walked them all
    again, while the transfers' requests and answers kept starting collections. (Measured on
    a first sync of 20,000 files: 600 collections, a quarter of the client's CPU, most of it
    in five full ones.) What the transfers make is collected as usual; a cycle among the
    frozen objects waits for the next collection after the pass. (`cubby put` does the same
    while it sends a tree: `cubby.client.upload.upload_tree`.)

    The youngest generation is collected every `YOUNG_THRESHOLD` allocations meanwhile, not
    every 700: the transfers' requests and answers are freed by reference counting, and the
    young collections they started (600 on that sync, after the freeze) cost three times the
    few that remain. A cycle made meanwhile waits at most that many allocations longer."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, *before[1:])
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
