"""The ObjectStore contract (`cubby.blockstore.objects`), run against every implementation
listed in `conftest.OBJECT_STORES`."""

from __future__ import annotations

import os
import threading

import pytest

from cubby.blockstore.folder import FolderObjectStore
from cubby.blockstore.objects import (
    ObjectMissing,
    ObjectStore,
    ObjectStoreError,
    StreamingPut,
    open_object_store,
)
from cubby.errors import BadRequest, CubbyError


def test_put_then_whole_and_ranged_reads(objects: ObjectStore):
    assert isinstance(objects, ObjectStore)
    data = os.urandom(100_000)
    objects.put("packs/ab/one.pack", data)
    assert objects.get("packs/ab/one.pack") == data
    assert objects.get("packs/ab/one.pack", 1000, 5000) == data[1000:6000]
    assert objects.get("packs/ab/one.pack", 99_999, 1) == data[-1:]
    assert objects.get("packs/ab/one.pack", 0, 0) == b""


def test_missing_objects_and_short_reads(objects: ObjectStore):
    with pytest.raises(ObjectMissing):
        objects.get("packs/no/such.pack")
    with pytest.raises(ObjectMissing):
        objects.get("packs/no/such.pack", 10, 10)
    objects.put("small", b"0123456789")
    with pytest.raises(ObjectStoreError):
        objects.get("small", 5, 10)  # only 5 bytes are there


def test_put_again_is_harmless_and_delete_is_idempotent(objects: ObjectStore):
    objects.put("a/b", b"same")
    objects.put("a/b", b"same")  # a retried request
    assert objects.get("a/b") == b"same"
    objects.delete("a/b")
    objects.delete("a/b")
    objects.delete("never/was")
    with pytest.raises(ObjectMissing):
        objects.get("a/b")


def test_list_yields_each_object_once_with_its_size(objects: ObjectStore):
    names = {f"packs/{i:02x}/p{i}.pack": i * 10 for i in range(1, 30)}
    for name, size in names.items():
        objects.put(name, b"x" * size)
    objects.put("other/thing", b"abc")
    listed = list(objects.list("packs/"))
    assert sorted(listed) == sorted(names.items())
    assert dict(objects.list()) == {**names, "other/thing": 3}
    assert list(objects.list("packs/01/")) == [("packs/01/p1.pack", 10)]
    assert list(objects.list("nothing/")) == []


@pytest.mark.parametrize("name", ["", "/abs", "a//b", "a/../b", "..", ".", "a/./b", "a b", "a\\b", "a/b/", "é"])
def test_bad_names_are_refused(objects: ObjectStore, name: str):
    with pytest.raises(BadRequest):
        objects.put(name, b"x")
    with pytest.raises(BadRequest):
        objects.get(name)
    with pytest.raises(BadRequest):
        objects.delete(name)


def test_concurrent_puts_from_threads(objects: ObjectStore):
    blobs = {f"t/{i}": os.urandom(50_000) for i in range(16)}
    threads = [threading.Thread(target=objects.put, args=item) for item in blobs.items()]
    threads += [threading.Thread(target=objects.put, args=("t/0", blobs["t/0"])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {n: objects.get(n) for n in blobs} == blobs
    assert dict(objects.list("t/")) == {n: len(b) for n, b in blobs.items()}


# -- the folder implementation ---------------------------------------------------------------
def test_folder_put_leaves_no_temp_file_and_a_dead_writers_is_swept(tmp_path):
    store = FolderObjectStore(tmp_path)
    store.put("x/y", b"data")
    assert list((tmp_path / "tmp").iterdir()) == []
    stale = tmp_path / "tmp" / "dead.part"
    stale.write_bytes(b"partial")  # a writer died before its rename
    os.utime(stale, (1, 1))
    assert dict(store.list()) == {"x/y": 4}  # temp files are never objects
    FolderObjectStore(tmp_path)
    assert not stale.exists()
    with pytest.raises(BadRequest):
        store.put("tmp/sneaky", b"x")


def test_open_object_store_by_url(tmp_path):
    assert isinstance(open_object_store(str(tmp_path / "a")), FolderObjectStore)
    assert isinstance(open_object_store(f"file://{tmp_path / 'b'}"), FolderObjectStore)
    with pytest.raises(CubbyError):
        open_object_store("gopher://example/x")


def test_folder_put_parts_stores_the_parts_in_order_as_they_come(tmp_path):
    """A pack store streams a pack into the folder store part by part; the object is the
    parts' concatenation (larger than the writeback step, so that path runs too)."""
    store = FolderObjectStore(tmp_path)
    assert isinstance(store, StreamingPut)
    parts = [os.urandom(n) for n in (10, 3 * 2**20, 0, 2**20 + 7, 3 * 2**20)]
    seen: list[int] = []

    def produce():
        for i, part in enumerate(parts):
            seen.append(i)
            yield memoryview(part) if i % 2 else part

    store.put_parts("packs/ab/big.pack", produce())
    assert seen == list(range(len(parts)))
    assert store.get("packs/ab/big.pack") == b"".join(parts)
    assert os.listdir(tmp_path / "tmp") == []


def test_folder_put_parts_stores_nothing_when_the_producer_fails(tmp_path):
    store = FolderObjectStore(tmp_path)

    class Refused(Exception):
        pass

    def produce():
        yield os.urandom(5 * 2**20)
        raise Refused("a chunk did not match its name")

    with pytest.raises(Refused):
        store.put_parts("packs/ab/half.pack", produce())
    with pytest.raises(ObjectMissing):
        store.get("packs/ab/half.pack")
    assert os.listdir(tmp_path / "tmp") == [] and list(store.list()) == []


def test_folder_put_parts_gathers_small_parts_into_few_writes(tmp_path, monkeypatch):
    """Many small parts (a pack of 4 KiB chunks: a codec byte, then the chunk) go to the disk
    in a few large writes, in order, with a large part among them written in its place."""
    import cubby.blockstore.folder as folder

    store = FolderObjectStore(tmp_path)
    parts: list[bytes | memoryview] = []
    for i in range(3000):
        parts += [bytes((i % 2,)), memoryview(os.urandom(4096))]
        if i == 1500:
            parts.append(os.urandom(3 * 2**20))
    writes: list[int] = []
    real_write = os.write

    def counted(fd: int, data: bytes | memoryview) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(folder.os, "write", counted)
    store.put_parts("packs/cd/small.pack", iter(parts))
    assert store.get("packs/cd/small.pack") == b"".join(parts)
    assert sum(writes) == sum(len(p) for p in parts)
    assert len(writes) < 20  # 6,001 parts; 15 MiB at most 1 MiB a write
