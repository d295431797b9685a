"""zstd where it pays, raw where it does not, and a cheap decision."""

from __future__ import annotations

import os
import time

import pytest

from cubby.core.compression import RAW, ZSTD, Codec, CorruptChunk

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


def test_incompressible_data_costs_only_a_sample():
    c = Codec()
    data = os.urandom(4 * 1024 * 1024)
    c.encode(data)  # warm up
    t = time.perf_counter()
    for _ in range(5):
        c.encode(data)
    raw = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(5):
        c._ctx()[0].compress(data)
    full = time.perf_counter() - t
    assert raw < full / 3, (raw, full)


@pytest.mark.parametrize("blob", [b"", b"\x07abc", b"\x01not zstd"])
def test_corrupt_blobs_are_refused(blob):
    with pytest.raises(CorruptChunk):
        Codec().decode(blob)
