"""glibc's malloc tuned for a process that moves chunks of about a MiB.

Why: glibc serves an allocation above its *mmap threshold* (128 KiB at start, raised as large
blocks are freed, at most 32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` when
it is freed, and it returns the free top of a heap to the kernel above its *trim threshold*.
Every chunk cubby reads, receives, verifies or writes is a ``bytes`` object of 4 KiB to 8 MiB
(an extent read from a pack is up to `cubby.blockstore.extents.SPAN`), made and dropped many
times a second. Each fresh mapping costs a page fault for every 4 KiB touched, which the kernel
also zeroes: on a virtual machine that is where a download's server CPU went. Measured with
``bench/transfer.py`` (1 GiB, local packs, 2026-12-02, load 2-4, two rounds each): the server
spent 1.57-1.93 CPU s per GiB on ``cubby get`` with glibc's defaults and 1.26-1.46 with the
thresholds below (set then through ``GLIBC_TUNABLES``), and 3.37-3.49 against 3.06-3.25 on
``cubby put``.

With the mmap threshold fixed at its ceiling, blocks up to 32 MiB come from the heap and are
used again once freed; the trim threshold keeps up to ``trim`` bytes of free heap instead of
handing it back after every burst. A process's footprint is then what it held at its busiest
(bounded by the reads and windows in flight), not what it holds now.

An operator who sets ``GLIBC_TUNABLES`` or ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
keeps their choice: nothing is changed then. On a C library other than glibc (musl, macOS),
nothing is changed either.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""The ``mallopt`` parameter numbers of glibc's ``<malloc.h>``."""

MMAP_THRESHOLD = 32 << 20
"""glibc's own ceiling for its dynamic mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``):
an extent (8 MiB) and a download window fit under it; anything larger is rare and stays a
mapping of its own."""
TRIM_THRESHOLD = 128 << 20
"""Free heap kept before it is returned to the kernel: a few download windows' worth."""

_OPERATOR_KNOBS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def tune_for_chunks(
    environ: Mapping[str, str] = os.environ, *, mmap: int = MMAP_THRESHOLD, trim: int = TRIM_THRESHOLD
) -> bool:
    """Set glibc's mmap and trim thresholds for this process (see the module docstring); True
    when both were set, False when nothing was changed (not glibc, or the operator chose)."""
    if any(environ.get(knob) for knob in _OPERATOR_KNOBS):
        return False
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
    except (ValueError, OSError, AttributeError):  # no such name: not glibc
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap)) and bool(mallopt(M_TRIM_THRESHOLD, trim))


__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_for_chunks"]
