"""Python's cyclic garbage collector tuned for a server that answers batches of many rows.

Why: CPython runs a young-generation collection every 700 net allocations of container
objects (dicts, lists, tuples, dataclass instances), and every tenth of those an older one.
A batched request (1,000 commits, a prove group, an upload of 1,000 chunks) builds a few
dozen containers per file and keeps them until the batch ends, so each collection finds most
of them alive and promotes them, and the promotions trigger full collections, which walk every
object the process holds (SQLAlchemy's tables and compiled statements, Starlette's routes:
about 100,000 objects after start). Measured on ``bench/small_put_cpu.py``'s put of 10,000
files of 4 KiB (2026-12-03, slowed VM): the server spent 0.25 s of CPU inside the collector
(about 25 us per file, a tenth of its CPU) with the defaults, 0.05 s with the setting below,
nearly all of that before the first request.

What: after start, everything alive is moved out of the collector's sight (`gc.freeze`: the
modules, tables and routes live as long as the process; a collection first clears what start
left over), and the young generation's threshold is raised to `YOUNG_THRESHOLD`, so a batch's
short-lived rows die before a collection sees them. Cycles are still collected, only in fewer,
larger passes: garbage in cycles waits for at most `YOUNG_THRESHOLD` allocations (a few MiB).
Reference counting, which frees nearly everything a request makes, is unchanged.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Net container allocations between young collections (CPython's default is 700)."""


def tune_collector(young: int = YOUNG_THRESHOLD) -> None:
    """Freeze what the process holds now and raise the young threshold (see the module
    docstring); call it once the server is built, before it serves."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)


__all__ = ["YOUNG_THRESHOLD", "tune_collector"]
