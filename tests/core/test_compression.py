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


@pytest.mark.parametrize("many_at_once", [True, False])
def test_encode_many_stores_what_encode_parts_stores(monkeypatch, many_at_once):
    """`Codec.encode_many` (small chunks compressed in one call, or one by one where zstandard
    cannot) gives each chunk the bytes `Codec.encode_parts` gives it, None for None."""
    import cubby.core.compression as compression

    monkeypatch.setattr(compression, "MANY_AT_ONCE", many_at_once and compression.MANY_AT_ONCE)
    codec = Codec()
    datas = [
        os.urandom(4096), b"text " * 800, None, os.urandom(100), b"tiny text", TEXT[:SAMPLE],
        os.urandom(300_000), TEXT[:300_000], memoryview(b"view " * 900), bytearray(os.urandom(2048)),
    ]
    got = codec.encode_many(datas)
    want = [None if d is None else codec.encode_parts(d) for d in datas]
    assert [None if g is None else (bytes(g[0]), bytes(g[1])) for g in got] == [
        None if w is None else (bytes(w[0]), bytes(w[1])) for w in want
    ]
    assert [g[0] for g in got if g is not None] == [
        bytes((RAW,)), bytes((ZSTD,)), bytes((RAW,)), bytes((RAW,)), bytes((ZSTD,)), bytes((RAW,)), bytes((ZSTD,)),
        bytes((ZSTD,)), bytes((RAW,)),
    ]
    for g, d in zip(got, datas):
        if g is not None:
            assert codec.decode(g[0] + bytes(g[1])) == bytes(d)


def test_small_chunks_of_a_batch_are_compressed_in_one_call(monkeypatch):
    """The point of `Codec.encode_many`: one zstd call for a slice of small chunks, not one
    per chunk (each call lets go of the GIL; see its docstring)."""
    import cubby.core.compression as compression

    if not compression.MANY_AT_ONCE:
        pytest.skip("this zstandard has no multi_compress_to_buffer")
    codec = Codec()
    full, _ = _counting(codec)
    calls: list[int] = []

    class Many:
        def multi_compress_to_buffer(self, datas):
            calls.append(len(datas))
            return full.inner.multi_compress_to_buffer(datas)

    codec._local.ctx = (Many(), *codec._local.ctx[1:])
    chunks = [os.urandom(4096) for _ in range(64)]
    jobs = [(hashlib.sha256(d).hexdigest(), d, True) for d in chunks]
    assert [s[1] for s in verify_and_encode(codec, jobs)] == chunks
    assert calls == [64] and full.fed == 0
