"""zstd where it pays, raw where it does not, and a cheap decision."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from cubby.core.compression import (
    RAW,
    SAMPLE,
    ZSTD,
    Codec,
    CorruptChunk,
    iter_verify_and_encode,
    verify_and_encode,
)
from cubby.errors import ChunkMismatch

TEXT = b" ".join(f"word{i % 997} lorem ipsum {i}".encode() for i in range(200_000))[: 4 * 1024 * 1024]


def test_text_is_compressed_and_round_trips():
    c = Codec()
    blob = c.encode(TEXT)
    assert blob[0] == ZSTD and len(blob) < len(TEXT) / 3
    assert c.decode(blob) == TEXT


def test_random_data_is_stored_raw():
    c = Codec()
    data = os.urandom(4 * 1024 * 1024)
    blob = c.encode(data)
    assert blob[0] == RAW and blob[1:] == data
    assert c.decode(blob) == data


class _CountingCompressor:
    """Wraps a zstd compressor and counts the bytes it is given."""

    def __init__(self, inner):
        self.inner = inner
        self.fed = 0

    def compress(self, data):
        self.fed += len(data)
        return self.inner.compress(data)


def _counting(c: Codec) -> tuple[_CountingCompressor, _CountingCompressor]:
    full, fast, dec = c._ctx()
    counted = (_CountingCompressor(full), _CountingCompressor(fast))
    c._local.ctx = (*counted, dec)
    return counted


def test_incompressible_data_costs_only_a_sample():
    """Random data is judged from one sample and never compressed whole: the work done on it
    is bounded by SAMPLE bytes whatever the chunk size (the timing lives in bench/ingest.py)."""
    c = Codec()
    full, fast = _counting(c)
    data = os.urandom(4 * 1024 * 1024)
    assert c.encode(data)[0] == RAW
    assert full.fed == 0 and fast.fed <= SAMPLE


def test_compressible_data_is_probed_then_compressed_once():
    c = Codec()
    full, fast = _counting(c)
    assert c.encode(TEXT)[0] == ZSTD
    assert full.fed == len(TEXT) and fast.fed <= SAMPLE


@pytest.mark.parametrize("blob", [b"", b"\x07abc", b"\x01not zstd"])
def test_corrupt_blobs_are_refused(blob):
    with pytest.raises(CorruptChunk):
        Codec().decode(blob)


def test_a_view_into_a_larger_read_decodes_like_the_blob_itself():
    """Pack reads decode chunks from views into one extent: both codecs round-trip so."""
    c = Codec()
    raw, packed = c.encode(os.urandom(300_000)), c.encode(TEXT)
    extent = memoryview(b"head" + raw + packed + b"tail")
    assert c.decode(extent[4 : 4 + len(raw)]) == raw[1:]
    assert c.decode(extent[4 + len(raw) : 4 + len(raw) + len(packed)]) == TEXT
    with pytest.raises(CorruptChunk):
        c.decode(extent[4 + len(raw) : 4 + len(raw) + len(packed) - 10])


def test_chunks_of_any_level_decode_with_the_default_codec():
    """The level is the writer's choice alone: a store written at another level reads as before."""
    for level in (3, 1, -1):
        blob = Codec(level=level).encode(TEXT)
        assert blob[0] == ZSTD and Codec().decode(blob) == TEXT


def test_verified_chunks_come_one_by_one_and_a_bad_one_raises_where_it_stands():
    """`iter_verify_and_encode` gives what `verify_and_encode` gives, in order, and stops at a
    chunk that does not match its name, after the ones before it (on a pool too)."""
    codec = Codec()
    datas = [os.urandom(300_000), b"text " * 60_000, os.urandom(300_000), os.urandom(300_000)]
    jobs = [(hashlib.sha256(d).hexdigest(), d, i != 2) for i, d in enumerate(datas)]
    with ThreadPoolExecutor(2) as pool:
        for executor in (None, pool):
            assert list(iter_verify_and_encode(codec, jobs, executor)) == verify_and_encode(codec, jobs, executor)
            bad = [*jobs[:3], (jobs[3][0], os.urandom(300_000), True)]
            got = iter_verify_and_encode(codec, bad, executor)
            assert [next(got) for _ in range(3)][2] is None
            with pytest.raises(ChunkMismatch):
                next(got)
