"""Read-ahead over an object store: small reads served from one larger read, same bytes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cubby.blockstore.folder import FolderObjectStore
from cubby.blockstore.objects import ObjectMissing, ObjectStoreError
from cubby.blockstore.readahead import ReadAheadObjectStore


class Counting(FolderObjectStore):
    """A folder store that counts the reads that reach it, and can hold them back."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[tuple[str, int, int | None]] = []
        self.gate = threading.Event()
        self.gate.set()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.reads.append((name, offset, length))
        self.gate.wait(10)
        return super().get(name, offset, length)


@pytest.fixture
def inner(tmp_path: Path) -> Iterator[Counting]:
    store = Counting(tmp_path)
    yield store
    store.close()


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for offset in range(0, total, size):
        yield offset, min(size, total - offset)


def test_sequential_chunk_reads_take_one_read_per_window(inner: Counting) -> None:
    data = os.urandom(10 * 65536 + 1234)
    inner.put("packs/p", data)
    store = ReadAheadObjectStore(inner, window=65536, windows=4)
    got = b"".join(store.get("packs/p", offset, n) for offset, n in chunks(len(data), 3000))
    assert got == data
    # 11 windows; the last one (the object ends inside it) is what the object has, not read again
    assert len(inner.reads) <= 12 < len(data) // 3000
    assert all(length == 65536 for _, _, length in inner.reads)


def test_reads_of_a_megabyte_or_more_are_not_read_ahead(inner: Counting) -> None:
    """Extents of neighbouring chunks (`read_many`) are already large: reading ahead of them
    would fetch bytes nobody asked for and make each extent wait for the one before it."""
    data = os.urandom(3 << 20)
    inner.put("p", data)
    store = ReadAheadObjectStore(inner)  # 8 MiB windows
    one = 1 << 20
    assert store.get("p", 0, one) == data[:one] and store.get("p", one, 2 * one) == data[one:]
    assert inner.reads == [("p", 0, one), ("p", one, 2 * one)]
    assert store.get("p", 10, 1000) == data[10:1010]  # a small read still reads ahead, to the end
    assert store.get("p", 2000, 5000) == data[2000:7000]
    assert inner.reads[2:] == [("p", 10, 8 << 20)]


def test_large_and_whole_reads_go_straight_through(inner: Counting) -> None:
    data = os.urandom(100_000)
    inner.put("p", data)
    store = ReadAheadObjectStore(inner, window=65536)
    assert store.get("p") == data and store.get("p", 10, 40_000) == data[10:40_010]
    assert inner.reads == [("p", 0, None), ("p", 10, 40_000)]


def test_short_reads_and_missing_objects_are_still_errors(inner: Counting) -> None:
    inner.put("p", b"0123456789")
    store = ReadAheadObjectStore(inner, window=65536)
    assert store.get("p", 2, 3) == b"234"
    with pytest.raises(ObjectStoreError) as info:
        store.get("p", 8, 5)
    assert not isinstance(info.value, ObjectMissing)
    with pytest.raises(ObjectStoreError):
        store.get("p", 50, 1)
    with pytest.raises(ObjectMissing):
        store.get("nope", 0, 10)
    store.delete("p")
    with pytest.raises(ObjectMissing):
        store.get("p", 2, 3)  # its windows are forgotten with it


def test_threads_wanting_one_window_share_one_read(inner: Counting) -> None:
    data = os.urandom(65536)
    inner.put("p", data)
    store = ReadAheadObjectStore(inner, window=65536)
    inner.gate.clear()
    results: dict[int, bytes] = {}
    first = threading.Thread(target=lambda: results.__setitem__(0, store.get("p", 0, 100)))
    first.start()
    while not inner.reads:
        threading.Event().wait(0.01)
    others = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, store.get("p", i * 1000, 100)))
        for i in range(1, 6)
    ]
    for t in others:
        t.start()
    inner.gate.set()
    for t in [first, *others]:
        t.join(10)
    assert results == {i: data[i * 1000 : i * 1000 + 100] for i in range(6)}
    assert inner.reads == [("p", 0, 65536)]


def test_memory_is_bounded_by_the_window_count(inner: Counting) -> None:
    for i in range(3):
        inner.put(f"p{i}", os.urandom(1000))
    store = ReadAheadObjectStore(inner, window=4096, windows=2)
    store.get("p0", 0, 10)
    store.get("p1", 0, 10)
    store.get("p0", 5, 10)  # kept: no read
    assert len(inner.reads) == 2  # one read per window (it runs past the end: what exists)
    store.get("p2", 0, 10)  # a third window: p1's, the least recently used, is dropped
    store.get("p0", 20, 10)
    assert len(inner.reads) == 3
    store.get("p1", 20, 10)
    assert len(inner.reads) == 4
