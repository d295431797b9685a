"""Python's cyclic garbage collector tuned for a server that answers batches of many rows
(and kept out of a client command's shutdown: `freeze_at_exit`).

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

import atexit
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


def freeze_at_exit() -> None:
    """Have everything alive moved out of the collector's sight once the command is done (an
    `atexit` handler: after the command, before the interpreter tears its modules down).

    Why: the interpreter's shutdown runs full collections while it clears the modules, and
    each walks every object a command left (the modules of the HTTP stack, and a `cubby put`'s
    results): 27 ms between the last `atexit` handler and the end of a `cubby put` of 10,000
    files, 12 ms with this, on the 2-core machine (2026-12-06); a shorter command, with
    fewer objects, less. Nothing is lost by it: reference counting still frees what
    shutdown frees, open files are closed by the ``with`` blocks that opened them, and
    standard output is flushed by the interpreter as before; only objects in reference
    cycles are left to the operating system, as memory. For client commands: a server keeps
    its own shutdown (its databases' connections are closed by their owners)."""
    atexit.register(gc.freeze)


__all__ = ["YOUNG_THRESHOLD", "freeze_at_exit", "tune_collector"]
