"""The BlockStore contract, run against every implementation."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cubby.blockstore.base import BlockStore
from cubby.blockstore.local import LocalBlockStore
from cubby.blockstore.memory import MemoryBlockStore
from cubby.blockstore.packs import TARGET_PACK, PackBlockStore
from cubby.core.compression import CorruptChunk
from cubby.errors import BadRequest, ChunkMismatch, NotFound
from cubby.metadata.chunk_index import SqlChunkIndex
from cubby.metadata.store import open_store
from tests.blockstore.conftest import OBJECT_STORES


@pytest.fixture(
    params=["memory", "local", "local-threads", "packs-threads", "packs-tiny"] + [f"packs-{o}" for o in OBJECT_STORES]
)
def store(request, tmp_path) -> Iterator[BlockStore]:
    if request.param == "memory":
        yield MemoryBlockStore()
    elif request.param == "local":
        yield LocalBlockStore(tmp_path / "blocks")
    elif request.param == "local-threads":  # batches verified and compressed on a pool, as the server runs it
        with ThreadPoolExecutor(2) as pool:
            yield LocalBlockStore(tmp_path / "blocks", executor=pool)
    else:
        meta = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
        kind = request.param.removeprefix("packs-")
        objects = OBJECT_STORES[kind if kind in OBJECT_STORES else "folder"](request, tmp_path)
        with ThreadPoolExecutor(2) as pool:
            yield PackBlockStore(
                objects, SqlChunkIndex(meta.db),
                executor=pool if request.param == "packs-threads" else None,
                # tiny packs: a batch spreads over many packs
                target_size=1000 if request.param == "packs-tiny" else TARGET_PACK,
            )
        objects.close()
        meta.close()


def named(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data


def test_get_many_returns_the_stored_ones_and_leaves_out_the_rest(store):
    held = [named(os.urandom(n)) for n in (1, 4096, 70_000, 3000)]
    store.put_many(held)
    absent = [named(os.urandom(100))[0] for _ in range(3)]
    asked = [absent[0], held[2][0], absent[1], held[0][0], held[1][0], absent[2], held[0][0]]
    got = store.get_many(asked)
    assert got == dict(held[:3])
    assert store.get_many(absent) == {}
    assert store.get_many([]) == {}
    store.delete(held[1][0])
    assert set(store.get_many([n for n, _ in held])) == {held[0][0], held[2][0], held[3][0]}
    with pytest.raises(BadRequest):
        store.get_many(["../etc/passwd"])


def test_put_get_has_delete_iterate(store):
    n, d = named(os.urandom(5000))
    assert isinstance(store, BlockStore)
    assert not store.has(n)
    assert store.put(n, d) is True
    assert store.put(n, d) is False
    assert store.has(n) and store.get(n) == d
    assert list(store.iterate()) == [n]
    store.delete(n)
    store.delete(n)  # idempotent
    assert not store.has(n)
    with pytest.raises(NotFound):
        store.get(n)


def test_mismatched_bytes_are_refused_and_nothing_is_written(store):
    n, _ = named(b"the real bytes")
    with pytest.raises(ChunkMismatch):
        store.put(n, b"other bytes")
    assert not store.has(n) and list(store.iterate()) == []
    good = named(b"good")
    with pytest.raises(ChunkMismatch):
        store.put_many([good, (n, b"other bytes")])
    assert not store.has(good[0])  # all are verified before any is written


def test_a_large_batch_with_one_bad_chunk_stores_nothing(store):
    """Large enough (over 1 MiB) that a store with an executor verifies it on its threads."""
    items = [named(os.urandom(300_000)) for _ in range(6)]
    bad_name, _ = named(b"claimed")
    with pytest.raises(ChunkMismatch):
        store.put_many([*items[:3], (bad_name, os.urandom(300_000)), *items[3:]])
    assert list(store.iterate()) == []
    assert store.put_many(items) == [True] * 6
    assert all(store.get(n) == d for n, d in items)


@pytest.mark.parametrize("name", ["", "../../etc/passwd", "A" * 64, "g" * 64, "ab/" + "0" * 61])
def test_bad_names_are_refused(store, name):
    with pytest.raises(BadRequest):
        store.put(name, b"x")


def test_put_many_and_compressible_data(store):
    items = [named(os.urandom(100)) for _ in range(50)] + [named(b"abc" * 100_000)]
    assert store.put_many(items + items[:3]) == [True] * 51 + [False] * 3
    assert sorted(store.iterate()) == sorted(n for n, _ in items)
    for n, d in items:
        assert store.get(n) == d


def test_concurrent_puts_of_the_same_chunk(store):
    n, d = named(os.urandom(300_000))
    threads = [threading.Thread(target=store.put, args=(n, d)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get(n) == d and list(store.iterate()) == [n]


def test_local_store_never_serves_a_corrupt_chunk(tmp_path):
    store = LocalBlockStore(tmp_path)
    n, d = named(os.urandom(1000))
    store.put(n, d)
    path = tmp_path / n[:2] / n
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptChunk):
        store.get(n)


def test_local_store_ignores_and_sweeps_a_dead_writers_temp_files(tmp_path):
    store = LocalBlockStore(tmp_path)
    n, _ = named(b"partial")
    stale = tmp_path / "tmp" / "dead.part"
    stale.write_bytes(b"\x00par")  # a writer died before its rename
    os.utime(stale, (1, 1))
    assert not store.has(n) and list(store.iterate()) == []
    LocalBlockStore(tmp_path)  # a new process opening the store sweeps old temp files
    assert not stale.exists()


def test_local_layout_is_fanned_out(tmp_path):
    store = LocalBlockStore(tmp_path)
    n, d = named(b"layout")
    store.put(n, d)
    assert (Path(tmp_path) / n[:2] / n).is_file()


def test_read_many_answers_in_the_order_asked_and_stops_at_an_absent_chunk(store):
    items = [named(os.urandom(size)) for size in (100, 70_000, 5000, 300_000, 1)]
    store.put_many(items)
    names = [n for n, _ in items]
    asked = [names[3], names[0], names[3], *names[1:3], names[4]]  # out of order, one twice
    assert list(store.read_many(asked)) == [(n, dict(items)[n]) for n in asked]
    assert list(store.read_many([])) == []
    absent, _ = named(b"never stored")
    got = store.read_many([names[0], absent, names[1]])
    assert next(got) == items[0]
    with pytest.raises(NotFound):
        next(got)
