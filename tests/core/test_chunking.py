"""FastCDC chunking: bounds, round trip, edit locality, bounded memory."""

from __future__ import annotations

import io
import os
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cubby.core.chunking import MAX_SIZE, MIN_SIZE, chunk_bytes, chunk_file, iter_chunks
from cubby.core.hashing import sha256_hex

DATA = random.Random(7).randbytes(12 * 1024 * 1024)
BASE = chunk_bytes(DATA)


def test_chunks_cover_the_input_within_bounds():
    assert b"".join(c.data for c in BASE) == DATA
    offsets = [c.offset for c in BASE]
    assert offsets == sorted(offsets) and offsets[0] == 0
    for c in BASE[:-1]:
        assert MIN_SIZE <= c.length <= MAX_SIZE
    assert all(sha256_hex(c.data) == c.hash for c in BASE)
    mean = len(DATA) / len(BASE)
    assert 0.6 * 1024 * 1024 < mean < 1.8 * 1024 * 1024, mean


def test_small_and_empty_inputs():
    assert chunk_bytes(b"") == []
    (only,) = chunk_bytes(b"hello")
    assert only.data == b"hello" and only.offset == 0


def test_chunking_is_independent_of_read_sizes():
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.buf = io.BytesIO(data)

        def readinto(self, b):  # hands out odd-sized reads, as pipes and sockets do
            n = min(len(b), random.Random(len(b)).randint(1, 300_000))
            chunk = self.buf.read(n)
            b[: len(chunk)] = chunk
            return len(chunk)

    assert [c.hash for c in iter_chunks(Trickle(DATA))] == [c.hash for c in BASE]


@settings(max_examples=20, deadline=None)
@given(
    pos=st.integers(min_value=0, max_value=len(DATA)),
    insert=st.binary(min_size=0, max_size=64),
    remove=st.integers(min_value=0, max_value=64),
)
def test_an_edit_changes_at_most_three_chunks(pos, insert, remove):
    edited = DATA[:pos] + insert + DATA[pos + remove :]
    new = chunk_bytes(edited)
    old_names = {c.hash for c in BASE}
    changed = [c for c in new if c.hash not in old_names]
    assert len(changed) <= 3, (pos, len(insert), remove, len(changed))
    assert b"".join(c.data for c in new) == edited


def test_streaming_memory_is_bounded():
    class Generated(io.RawIOBase):
        """256 MiB of pseudo-random bytes made on the fly: never all in memory."""

        def __init__(self, total: int) -> None:
            self.left = total
            self.rng = random.Random(1)

        def readinto(self, b):
            n = min(len(b), self.left, 1 << 20)
            if n <= 0:
                return 0
            b[:n] = self.rng.randbytes(n)
            self.left -= n
            return n

    tracemalloc.start()
    total = 0
    for c in iter_chunks(Generated(256 * 1024 * 1024), with_data=False):
        total += c.length
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == 256 * 1024 * 1024
    assert peak < 8 * MAX_SIZE, f"peak {peak / 2**20:.1f} MiB"


def test_with_data_false_names_the_same_chunks():
    assert [(c.hash, c.length) for c in iter_chunks(io.BytesIO(DATA), with_data=False)] == [
        (c.hash, c.length) for c in BASE
    ]
    assert all(c.data == b"" for c in iter_chunks(io.BytesIO(os.urandom(1000)), with_data=False))


@pytest.mark.parametrize("size", [0, 1, 4096, MIN_SIZE - 1, MIN_SIZE, MIN_SIZE + 1, 3 * MIN_SIZE])
def test_a_file_read_whole_gives_the_chunker_s_chunks(tmp_path, size):
    """`chunk_file` names a file of at most MIN_SIZE without the chunker: the same chunks."""
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    expected = [(c.offset, c.length, c.hash, c.data) for c in iter_chunks(io.BytesIO(data))]
    assert [(c.offset, c.length, c.hash, c.data) for c in chunk_file(path)] == expected
    assert [(c.offset, c.length, c.hash) for c in chunk_file(path, with_data=False)] == [e[:3] for e in expected]
