"""glibc's malloc tuned for chunk buffers (`cubby.core.malloc`): what it changes, and when it
leaves the operator's choice alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cubby.core.malloc import tune_for_chunks

SRC = Path(__file__).resolve().parents[2] / "src"

glibc = pytest.mark.skipif(
    not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"), reason="glibc's malloc only"
)

# A fresh interpreter counts glibc's mmapped blocks (mallinfo2().hblks) around an 8 MiB
# allocation, before and after tuning: with the defaults the block is a fresh mapping (the page
# faults this module exists to avoid), tuned it comes from the heap.
PROBE = """
import ctypes, sys
from cubby.core.malloc import tune_for_chunks

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info

def mapped_by(size):
    before = libc.mallinfo2().hblks
    buf = bytearray(size)
    during = libc.mallinfo2().hblks
    del buf
    return during - before

default = mapped_by(8 << 20)
tuned = tune_for_chunks({})
print(default, tuned, mapped_by(8 << 20), mapped_by(24 << 20), mapped_by(48 << 20))
"""


@glibc
def test_tuned_chunk_buffers_come_from_the_heap_not_fresh_mappings() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLIBC_TUNABLES", "MALLOC_"))}
    env["PYTHONPATH"] = str(SRC)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    default, tuned, after, larger, beyond = out.stdout.split()
    assert (default, tuned) == ("1", "True")  # glibc's default maps 8 MiB afresh
    assert (after, larger) == ("0", "0")  # tuned: from the heap, up to the 32 MiB threshold
    assert beyond == "1"  # and a block above it is still a mapping of its own


@glibc
def test_the_operators_own_malloc_settings_are_kept() -> None:
    for knob in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        assert tune_for_chunks({knob: "1"}) is False
