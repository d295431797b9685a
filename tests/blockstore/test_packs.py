"""The pack store beyond the BlockStore contract: packs, the index, many processes, compaction,
rebuilding the index from packs, and reading and migrating a store of an earlier release."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cubby.blockstore import packs as packs_module
from cubby.blockstore.extents import SPAN
from cubby.blockstore.folder import FolderObjectStore
from cubby.blockstore.index import NewPack, iter_usage
from cubby.blockstore.local import LocalBlockStore
from cubby.blockstore.objects import ObjectStore, StreamingPut
from cubby.blockstore.opener import open_block_store
from cubby.blockstore.packfile import Location, pack_object_name, read_trailer
from cubby.blockstore.packs import PackBlockStore
from cubby.core.compression import CorruptChunk
from cubby.errors import ChunkMismatch, NotFound
from cubby.metadata.chunk_index import SqlChunkIndex
from cubby.metadata.schema import chunk_index
from cubby.metadata.store import SqlMetadataStore, open_store


def named(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data


class CountingObjects:
    """Wraps an ObjectStore and counts its calls (behaviour by wrapping)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def put(self, name: str, data: bytes) -> None:
        self.calls.append(("put", name))
        self.inner.put(name, data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.calls.append(("get", name))
        return self.inner.get(name, offset, length)

    def delete(self, name: str) -> None:
        self.calls.append(("delete", name))
        self.inner.delete(name)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[SqlMetadataStore]:
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    yield store
    store.close()


def pack_store(meta: SqlMetadataStore, root: Path, **kw: object) -> PackBlockStore:
    return PackBlockStore(FolderObjectStore(root), SqlChunkIndex(meta.db), **kw)  # type: ignore[arg-type]


def test_a_batch_is_one_pack_and_a_read_is_one_ranged_read(meta, tmp_path):
    objects = CountingObjects(FolderObjectStore(tmp_path / "blocks"))
    store = PackBlockStore(objects, SqlChunkIndex(meta.db))
    items = [named(os.urandom(4096)) for _ in range(1000)]
    assert store.put_many(items) == [True] * 1000
    assert [c for c, _ in objects.calls] == ["put"]  # a thousand chunks, one object
    assert len(list(objects.list("packs/"))) == 1
    objects.calls.clear()
    for n, d in items[::97]:
        assert store.get(n) == d
    assert [c for c, _ in objects.calls] == ["get"] * len(items[::97])
    assert store.put_many(items[:10]) == [False] * 10 and objects.calls.count(("put", "")) == 0


def test_a_batch_larger_than_the_target_spreads_over_packs(meta, tmp_path):
    store = pack_store(meta, tmp_path / "blocks", target_size=64 * 1024)
    items = [named(os.urandom(20_000)) for _ in range(20)]
    store.put_many(items)
    sizes = [s for _, s in store.objects.list("packs/")]
    assert len(sizes) == 5 and all(s < 64 * 1024 + 20_001 + 1024 for s in sizes)  # full at 4 chunks
    assert all(store.get(n) == d for n, d in items)


def test_two_processes_on_one_folder_and_one_database_serve_each_others_chunks(tmp_path):
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    a_meta, b_meta = open_store(url), open_store(url)  # separate engines, as two processes have
    try:
        a = pack_store(a_meta, tmp_path / "blocks")
        b = pack_store(b_meta, tmp_path / "blocks")
        ia = [named(os.urandom(3000)) for _ in range(50)]
        ib = [named(os.urandom(3000)) for _ in range(50)]
        a.put_many(ia)
        b.put_many(ib)
        assert all(b.get(n) == d for n, d in ia) and all(a.get(n) == d for n, d in ib)
        assert b.put_many(ia[:5]) == [False] * 5  # dedup across processes
        assert sorted(a.iterate()) == sorted(b.iterate()) == sorted(n for n, _ in ia + ib)
    finally:
        a_meta.close()
        b_meta.close()


def test_the_index_is_rebuilt_from_the_packs_alone(meta, tmp_path):
    store = pack_store(meta, tmp_path / "blocks", target_size=50_000)
    items = [named(os.urandom(9000)) for _ in range(30)]
    store.put_many(items)
    (name, size), *_ = store.objects.list("packs/")
    entries = read_trailer("x", size, lambda off, n: store.objects.get(name, off, n))
    assert entries and all(loc.stored_len == 9001 for _, loc in entries)
    meta.db.write(lambda c: c.exec_driver_sql("DELETE FROM chunk_index"))
    meta.db.write(lambda c: c.exec_driver_sql("DELETE FROM packs"))
    with pytest.raises(NotFound):
        store.get(items[0][0])
    assert store.rebuild_index(page_size=2) == 30  # the listing two packs at a time
    assert all(store.get(n) == d for n, d in items)
    assert store.rebuild_index() == 0


def test_a_corrupt_pack_is_never_served(meta, tmp_path):
    store = pack_store(meta, tmp_path / "blocks")
    n, d = named(os.urandom(2000))
    store.put(n, d)
    (name, _), = store.objects.list("packs/")
    path = tmp_path / "blocks" / name
    blob = bytearray(path.read_bytes())
    blob[100] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptChunk):
        store.get(n)


@pytest.mark.parametrize("page", [1, 1000])
def test_compaction_rewrites_mostly_dead_packs_and_deletes_them_after_the_grace(meta, tmp_path, page):
    """With the pack list read a page of one pack at a time as well as all at once."""
    store = pack_store(meta, tmp_path / "blocks", target_size=300_000)
    first = [named(os.urandom(5000)) for _ in range(40)]
    second = [named(os.urandom(5000)) for _ in range(40)]
    store.put_many(first)
    store.put_many(second)
    old = {n for n, _ in store.objects.list("packs/")}
    for n, _ in first[:30]:  # three quarters of the first pack die; the second stays whole
        store.delete(n)
    stats = store.compact(threshold=0.5, grace=3600, page_size=page)
    assert stats.packs_rewritten == 1 and stats.chunks_moved == 10 and stats.packs_deleted == 0
    # Retired but kept for reads in flight: the old object is still there.
    assert old <= {n for n, _ in store.objects.list("packs/")}
    assert all(store.get(n) == d for n, d in first[30:] + second)
    stats = store.compact(threshold=0.5, grace=0, page_size=page)
    assert stats.packs_deleted == 1 and stats.packs_rewritten == 0
    left = {n for n, _ in store.objects.list("packs/")}
    assert len(left) == 2 and len(old & left) == 1
    assert all(store.get(n) == d for n, d in first[30:] + second)
    for n, _ in first[:30]:
        assert not store.has(n)


@pytest.mark.parametrize("page", [2, 1000])
def test_compaction_merges_small_packs_and_drops_wholly_dead_ones(meta, tmp_path, page):
    """Read two packs at a time or all at once, the same packs are merged."""
    store = pack_store(meta, tmp_path / "blocks")
    batches = [[named(os.urandom(1000)) for _ in range(3)] for _ in range(6)]
    for b in batches:
        store.put_many(b)
    for n, _ in batches[0]:
        store.delete(n)
    stats = store.compact(grace=0, page_size=page)
    assert stats.packs_rewritten == 6 and stats.chunks_moved == 15
    stats = store.compact(grace=0, page_size=page)
    assert len(list(store.objects.list("packs/"))) == 1
    assert all(store.get(n) == d for b in batches[1:] for n, d in b)


def test_compaction_tells_its_progress_after_each_rewrite_and_deletion(meta, tmp_path):
    store = pack_store(meta, tmp_path / "blocks", target_size=300_000)
    first = [named(os.urandom(5000)) for _ in range(40)]
    store.put_many(first)
    store.put_many([named(os.urandom(5000)) for _ in range(40)])
    for n, _ in first[:30]:
        store.delete(n)
    seen: list[tuple[int, int]] = []

    def told(s) -> None:  # type: ignore[no-untyped-def]
        seen.append((s.packs_rewritten, s.packs_deleted))

    final = store.compact(threshold=0.5, grace=3600, progress=told)
    assert seen == [(1, 0)] and (final.packs_rewritten, final.packs_deleted) == (1, 0)
    seen.clear()
    store.compact(threshold=0.5, grace=0, progress=told)
    assert seen == [(0, 1)]


def test_a_pack_nobody_recorded_is_deleted_once_old(meta, tmp_path):
    store = pack_store(meta, tmp_path / "blocks")
    store.objects.put("packs/aa/0000000001" + "ab" * 12 + ".pack", b"a writer died before indexing this")
    fresh = f"{int(__import__('time').time()):010x}" + "cd" * 12
    store.objects.put(f"packs/cd/{fresh}.pack", b"a writer is about to index this")
    n, d = named(b"live")
    store.put(n, d)
    stats = store.compact(grace=0)
    assert stats.orphans_deleted == 1
    assert len(list(store.objects.list("packs/"))) == 2 and store.get(n) == d


def test_a_store_of_the_previous_release_is_read_as_it_is_and_migrated(meta, tmp_path):
    root = tmp_path / "blocks"
    old = LocalBlockStore(root)  # today's one-file-per-chunk layout
    items = [named(os.urandom(3000)) for _ in range(120)] + [named(b"text " * 5000)]
    old.put_many(items)
    store = open_block_store(str(root), meta.db)
    assert store.legacy is not None
    assert all(store.get(n) == d for n, d in items)
    assert store.put_many(items[:3]) == [False] * 3  # already there: not written again
    assert sorted(store.iterate()) == sorted(n for n, _ in items)
    seen: list[int] = []
    stats = store.migrate_legacy(batch_chunks=50, progress=lambda s: seen.append(s.chunks))
    assert stats.chunks == 121 and seen == [50, 100, 121]
    assert list(LocalBlockStore(root).iterate()) == []
    assert len(list(store.objects.list("packs/"))) == 3
    again = open_block_store(str(root), meta.db)
    assert again.legacy is None
    assert all(again.get(n) == d for n, d in items)
    assert sorted(again.iterate()) == sorted(n for n, _ in items)


def test_rows_are_keyed_by_hash_alone(meta, tmp_path):
    """The index can be split by hash prefix: its key is the chunk hash, nothing else."""
    assert [c.name for c in chunk_index.primary_key.columns] == ["hash"]


def test_read_many_reads_neighbouring_chunks_as_one_extent(meta, tmp_path):
    objects = CountingObjects(FolderObjectStore(tmp_path / "blocks"))
    store = PackBlockStore(objects, SqlChunkIndex(meta.db), reads_ahead=2)
    first = [named(os.urandom(1_000_000)) for _ in range(10)]
    second = [named(os.urandom(4096)) for _ in range(500)]
    store.put_many(first)
    store.put_many(second)
    objects.calls.clear()
    asked = [n for n, _ in first + second]
    assert list(store.read_many(asked)) == first + second
    # 10 MB of one pack in reads of at most SPAN bytes (whole chunks of 1 MB each), and 2 MB
    # of 4 KiB chunks in one more
    per_read = SPAN // 1_000_000
    assert [c for c, _ in objects.calls] == ["get"] * (-(-10 // per_read) + 1)
    store.close()


def test_read_many_looks_again_when_a_pack_was_compacted_away_meanwhile(meta, tmp_path):
    """A pack read after its chunks moved and its object was deleted: each chunk is looked up
    again and read where it is now, as `get` does."""
    store = pack_store(meta, tmp_path / "blocks")
    kept = [named(os.urandom(5000)) for _ in range(20)]
    dead = [named(os.urandom(5000)) for _ in range(80)]
    store.put_many(kept + dead)
    (old_pack,) = [n for n, _ in store.objects.list("packs/")]
    old_locations = store.index.lookup([n for n, _ in kept])
    for n, _ in dead:
        store.delete(n)
    store.compact(grace=0)
    store.compact(grace=0)
    assert old_pack not in [n for n, _ in store.objects.list("packs/")]

    class StaleIndex:
        """The index as it was before the compaction, for the first lookup only."""

        def __init__(self, inner: SqlChunkIndex) -> None:
            self.inner = inner
            self.stale = True

        def lookup(self, hashes):
            if self.stale:
                self.stale = False
                return {h: old_locations[h] for h in hashes if h in old_locations}
            return self.inner.lookup(hashes)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    store.index = StaleIndex(store.index)  # type: ignore[assignment]
    assert list(store.read_many([n for n, _ in kept])) == kept


def test_read_many_reads_chunks_of_the_previous_release_from_the_legacy_store(meta, tmp_path):
    legacy = LocalBlockStore(tmp_path / "blocks")
    old = [named(os.urandom(3000)) for _ in range(3)]
    legacy.put_many(old)
    store = open_block_store(str(tmp_path / "blocks"), meta.db)
    new = [named(os.urandom(3000)) for _ in range(3)]
    store.put_many(new)
    asked = [old[0][0], new[0][0], new[1][0], old[1][0], old[2][0], new[2][0]]
    assert [n for n, _ in store.read_many(asked)] == asked
    assert dict(store.read_many(asked)) == dict(old + new)


def test_read_many_without_verify_serves_the_same_bytes_and_still_refuses_what_does_not_decode(meta, tmp_path):
    """``verify=False`` (for a caller that hashes what it gets) skips only the hash: stored
    bytes come back as they were put, a corrupt raw chunk is refused by a verifying read, and a
    compressed chunk whose zstd frame is broken does not decode, so no read serves it."""
    store = pack_store(meta, tmp_path / "blocks")
    text = b" ".join(b"word%d lorem" % (i % 97) for i in range(40_000))
    items = [named(os.urandom(70_000)), named(text), named(os.urandom(5000))]
    store.put_many(items)
    names = [n for n, _ in items]
    assert list(store.read_many(names, verify=False)) == items
    (name, _), = store.objects.list("packs/")
    path = tmp_path / "blocks" / name
    blob = bytearray(path.read_bytes())
    blob[blob.index(items[0][1][:64]) + 10] ^= 0xFF  # inside the raw chunk
    blob[blob.index(b"\x01\x28\xb5\x2f\xfd") + 1] ^= 0xFF  # the compressed chunk's zstd magic
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptChunk):
        list(store.read_many(names[:1]))
    assert list(store.read_many(names[2:], verify=False)) == items[2:]
    with pytest.raises(CorruptChunk):
        list(store.read_many(names[1:2], verify=False))


def test_packs_on_a_folder_are_written_as_their_chunks_are_verified(meta, tmp_path):
    """The folder store takes a pack in parts (StreamingPut), so the pack store streams into
    it; the packs are the same format (their trailers rebuild the index) and the index's sizes
    are the objects' sizes."""
    store = pack_store(meta, tmp_path / "blocks", target_size=64 * 1024)
    assert isinstance(store.objects, StreamingPut)
    items = [named(os.urandom(20_000)) for _ in range(20)] + [named(b"text " * 4000)]
    assert store.put_many(items) == [True] * 21
    listed = dict(store.objects.list("packs/"))
    assert len(listed) == 6  # full at 4 chunks of 20,000 bytes, then the compressed one alone
    usage = {u.pack: u.size for u in iter_usage(store.index)}
    assert {name.rsplit("/", 1)[1].removesuffix(".pack"): size for name, size in listed.items()} == usage
    assert all(store.get(n) == d for n, d in items)
    meta.db.write(lambda c: c.exec_driver_sql("DELETE FROM chunk_index"))
    meta.db.write(lambda c: c.exec_driver_sql("DELETE FROM packs"))
    assert store.rebuild_index() == 21
    assert all(store.get(n) == d for n, d in items)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_bad_chunk_after_packs_were_written_leaves_no_pack_behind(meta, tmp_path, threads):
    """Chunks are written as they are verified, so packs of the batch before the bad chunk
    were already durable: they are deleted, and nothing was indexed."""
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    store = pack_store(meta, tmp_path / "blocks", target_size=64 * 1024, executor=pool)
    items = [named(os.urandom(300_000)) for _ in range(6)]
    bad = (named(b"claimed")[0], os.urandom(300_000))
    known = named(os.urandom(1000))
    store.put(*known)
    before = dict(store.objects.list("packs/"))
    for batch in ([*items, bad], [*items, (known[0], b"not the known chunk's bytes")]):
        with pytest.raises(ChunkMismatch):
            store.put_many(batch)
        assert dict(store.objects.list("packs/")) == before
        assert list(store.iterate()) == [known[0]]
        assert os.listdir(tmp_path / "blocks" / "tmp") == []
    assert store.put_many(items) == [True] * 6
    assert all(store.get(n) == d for n, d in items)
    if pool is not None:
        pool.shutdown()


def test_present_agrees_with_lookup_on_every_engine(db_url, tmp_path):
    """`ChunkIndex.present` answers `lookup`'s keys, on present, absent and mixed sets, with
    repeats, and past one statement's worth of hashes (its IN lists are cut in parts); the
    pack store's `present` (what an upload asks of each chunk) answers the same."""
    meta = open_store(db_url)
    try:
        index = SqlChunkIndex(meta.db)
        store = PackBlockStore(FolderObjectStore(tmp_path / "blocks"), index)
        stored = [named(os.urandom(64)) for _ in range(700)]
        store.put_many(stored)
        absent = [hashlib.sha256(b"absent %d" % i).hexdigest() for i in range(600)]
        names = [n for n, _ in stored]
        for asked in ([], names[:1], names, absent[:1], absent, names[::3] + absent[::2] + names[:5], [names[0]] * 3):
            want = set(index.lookup(asked))
            assert index.present(asked) == want
            assert store.present(iter(asked)) == want
            assert want == set(asked) & set(names)
    finally:
        meta.close()


def test_present_includes_the_legacy_store_s_chunks(meta, tmp_path):
    legacy = LocalBlockStore(tmp_path / "blocks")
    old = [named(os.urandom(100)) for _ in range(3)]
    legacy.put_many(old)
    store = open_block_store(str(tmp_path / "blocks"), meta.db)
    new = [named(os.urandom(100)) for _ in range(3)]
    store.put_many(new)
    gone = hashlib.sha256(b"never stored").hexdigest()
    asked = [old[0][0], new[0][0], gone, old[2][0], new[2][0]]
    assert store.present(asked) == set(asked) - {gone}
    assert store.put_many(old[:1] + [named(os.urandom(100))]) == [False, True]


def test_stage_many_records_in_the_callers_transaction_or_does_nothing(meta, tmp_path):
    """A staged put writes durable packs and leaves their index rows to the caller's write
    transaction on the index's database: nothing is findable before it commits, nothing if it
    rolls back (the bytes are then an unrecorded pack), everything after. On another database
    it does nothing at all."""
    store = pack_store(meta, tmp_path / "blocks")
    items = [named(os.urandom(3000)) for _ in range(5)]
    names = [n for n, _ in items]
    other = open_store(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        assert store.stage_many(items, other.db) is None
    finally:
        other.close()
    assert list(store.objects.list("packs/")) == []

    staged = store.stage_many(items, meta.db)
    assert staged is not None
    new, record = staged
    assert new == [True] * 5 and len(list(store.objects.list("packs/"))) == 1
    assert store.present(names) == set()

    def fail(conn):
        record()
        assert store.present(names) == set(names)  # seen inside the transaction
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        meta.db.write(fail)
    assert store.present(names) == set()
    meta.db.write(lambda conn: record())
    assert store.present(names) == set(names)
    assert dict(store.read_many(names)) == dict(items)
    again = store.stage_many(items[:2] + [named(b"x" * 100)], meta.db)
    assert again is not None and again[0] == [False, False, True]


def test_read_many_without_verify_hands_raw_chunks_out_as_read_only_views(meta, tmp_path):
    """An uncompressed chunk read unverified is a read-only view of its extent (no copy for a
    caller that only sends it on); a compressed one is its decompressed bytes; a verified read
    and `get_many` still give bytes; a raw chunk whose stored length is not its row's is
    refused, not served as a view of the wrong bytes."""
    store = pack_store(meta, tmp_path / "blocks")
    text = b" ".join(b"word%d ipsum" % (i % 89) for i in range(30_000))
    items = [named(os.urandom(100_000)), named(text), named(os.urandom(3000)), named(os.urandom(100_000))]
    store.put_many(items)
    names = [n for n, _ in items]
    got = list(store.read_many(names + names[:1], verify=False))
    assert [(n, bytes(d)) for n, d in got] == items + items[:1]
    assert [type(d) for _, d in got] == [memoryview, bytes, memoryview, memoryview, memoryview]
    assert all(d.readonly for _, d in got if isinstance(d, memoryview))
    assert all(type(d) is bytes for _, d in store.read_many(names))
    assert all(type(d) is bytes for d in store.get_many(names).values())

    meta.db.write(lambda c: c.execute(chunk_index.update().where(chunk_index.c.hash == names[2]).values(plain_len=2999)))
    assert [(n, bytes(d)) for n, d in store.read_many(names[:2], verify=False)] == items[:2]
    with pytest.raises(CorruptChunk):
        list(store.read_many(names[2:3], verify=False))


def test_chunks_that_could_not_be_read_are_mended_by_an_upload_of_their_bytes(meta, tmp_path):
    """A lost pack and a byte flipped in another: reading fails (and is remembered), and a
    `put_many` of the same bytes, which the index already places, stores them again and moves
    their locations; the caller is told they were not new. A chunk nobody failed to read is not
    stored twice."""
    store = pack_store(meta, tmp_path / "blocks")
    lost = [named(os.urandom(5000)) for _ in range(3)]
    flipped, fine = named(os.urandom(6000)), named(os.urandom(7000))
    store.put_many(lost)
    store.put_many([flipped, fine])
    lost_pack = store.index.lookup([lost[0][0]])[lost[0][0]].pack
    os.unlink(tmp_path / "blocks" / pack_object_name(lost_pack))
    loc = store.index.lookup([flipped[0]])[flipped[0]]
    path = tmp_path / "blocks" / pack_object_name(loc.pack)
    raw = bytearray(path.read_bytes())
    raw[loc.pos + 9] ^= 1
    path.write_bytes(bytes(raw))
    for name, _ in [lost[0], flipped]:
        with pytest.raises(CorruptChunk):
            store.get(name)
    packs = len(list(store.objects.list("packs/")))
    assert store.put_many([fine]) == [False] and len(list(store.objects.list("packs/"))) == packs
    # All three of the lost pack's chunks were remembered when the first failed to read.
    assert store.put_many([*lost, flipped, fine]) == [False] * 5
    for name, data in [*lost, flipped, fine]:
        assert store.get(name) == data
    mended = {store.index.lookup([n])[n].pack for n, _ in [*lost, flipped]}
    assert len(mended) == 1 and mended.isdisjoint({lost_pack, loc.pack})  # one new pack holds all four


def test_a_lost_pack_does_not_stop_the_repack_of_the_others(meta, tmp_path):
    """Three small packs to merge, one of them lost: the other two are merged, the lost one is
    counted and left recorded (its chunks still point at it, for the check to report), and
    every chunk that was readable still is."""
    store = pack_store(meta, tmp_path / "blocks")
    batches = [[named(os.urandom(4000 + i))] for i in range(3)]
    for batch in batches:
        store.put_many(batch)
    gone = store.index.lookup([batches[1][0][0]])[batches[1][0][0]].pack
    os.unlink(tmp_path / "blocks" / pack_object_name(gone))
    stats = store.compact(grace=0)
    assert (stats.packs_missing, stats.packs_rewritten, stats.chunks_moved) == (1, 2, 2)
    assert gone in {u.pack for u in iter_usage(store.index)}
    for name, data in batches[0] + batches[2]:
        assert store.get(name) == data
    with pytest.raises(CorruptChunk):
        store.get(batches[1][0][0])


def test_a_repack_drops_the_findings_of_the_chunks_it_moves_and_no_other(meta, tmp_path):
    """A finding names the pack a chunk could not be read from. A repack that reads the chunk
    there and moves it (a false alarm: a read that failed once) drops it; a finding about
    another pack than the chunk's, or about a chunk the repack leaves, stays."""
    store = pack_store(meta, tmp_path / "blocks")
    moved, other, kept = named(os.urandom(4000)), named(os.urandom(4100)), named(os.urandom(4200))
    store.put_many([moved, other])
    store.put_many([named(os.urandom(4300))])
    small = store.index.lookup([moved[0]])[moved[0]].pack
    store.put_many([kept] + [named(os.urandom(100_000)) for _ in range(60)])  # a large pack: not merged
    big = store.index.lookup([kept[0]])[kept[0]].pack
    store.index.mark_unreadable({moved[0]: small, other[0]: "0" * 34, kept[0]: big})
    assert store.index.unreadable_count() == 3
    stats = store.compact(grace=0)
    assert stats.chunks_moved >= 2 and store.index.lookup([moved[0]])[moved[0]].pack != small
    assert store.index.lookup([kept[0]])[kept[0]].pack == big
    assert store.index.unreadable([moved[0], other[0], kept[0]]) == {other[0]: "0" * 34, kept[0]: big}


def test_the_pack_list_is_read_in_pages_in_id_order_with_each_pack_s_live_bytes(meta, tmp_path):
    """`iter_usage` gives every recorded pack once, in id order, whatever the page size, with
    the stored bytes of its chunks still indexed; `known_among` answers for recorded and
    retired packs, and not for names no index recorded."""
    store = pack_store(meta, tmp_path / "blocks", target_size=5000)
    items = [named(os.urandom(6000)) for _ in range(7)]
    store.put_many(items)  # a pack per chunk: each one fills its pack
    dead = store.index.lookup([items[0][0]])[items[0][0]].pack
    store.delete(items[0][0])
    whole = list(iter_usage(store.index, page=1000))
    assert [u.pack for u in whole] == sorted(u.pack for u in whole) and len(whole) == 7
    for page in (1, 2, 3, 7):
        assert list(iter_usage(store.index, page=page)) == whole
    assert {u.pack: u.live for u in whole} == {u.pack: 0 if u.pack == dead else 6001 for u in whole}
    store.compact(grace=3600, page_size=2)  # retires the dead pack: still known, no longer listed
    assert dead not in {u.pack for u in iter_usage(store.index, page=2)}
    asked = [u.pack for u in whole] + ["0000000001" + "ef" * 12]
    assert store.index.known_among(asked) == {u.pack for u in whole}
    assert store.index.known_among([]) == set()


def test_orphans_are_found_in_listing_pages(meta, tmp_path):
    """Pack objects no index recorded are deleted once old, the listing checked a page of two
    names at a time; recorded packs and young orphans stay."""
    store = pack_store(meta, tmp_path / "blocks", target_size=5000)
    items = [named(os.urandom(6000)) for _ in range(3)]
    store.put_many(items)
    old = ["packs/aa/" + f"{i:010x}" + "ab" * 11 + "aa.pack" for i in range(1, 4)]
    for name in old:
        store.objects.put(name, b"a writer died before indexing this")
    young = f"{int(__import__('time').time()):010x}" + "cd" * 12
    store.objects.put(f"packs/cd/{young}.pack", b"a writer is about to index this")
    stats = store.compact(grace=0, page_size=2)
    assert stats.orphans_deleted == 3
    left = {n for n, _ in store.objects.list("packs/")}
    assert not left & set(old) and f"packs/cd/{young}.pack" in left
    assert all(store.get(n) == d for n, d in items)


def test_packs_made_while_compaction_walks_are_left_to_the_next_run(meta, tmp_path):
    """The collector walks the pack list a page at a time. A small pack recorded after the
    walk began (here by an upload the moment the walk retires a dead pack, a second later so
    that its id sorts after every pack already there, as the walk's own new packs do) is not
    taken into this run's merge, as a list read whole at the start would not have held it;
    the next run merges it."""
    store = pack_store(meta, tmp_path / "blocks")
    early = [[named(os.urandom(1000))] for _ in range(4)]
    for batch in early:
        store.put_many(batch)
    store.delete(early[0][0][0])  # its pack is dead: retiring it calls the hook during the walk
    late = named(os.urandom(1000))

    def during(step: str) -> None:
        if step == "retired" and not store.has(late[0]):
            time.sleep(1.1)
            store.put_many([late])

    stats = store.compact(grace=0, page_size=1, fault=during)
    assert store.has(late[0]) and (stats.packs_rewritten, stats.chunks_moved) == (4, 3)
    late_pack = store.index.lookup([late[0]])[late[0]].pack
    assert late_pack in {u.pack for u in iter_usage(store.index)}
    stats = store.compact(grace=0)
    assert stats.chunks_moved == 4 and len(list(store.objects.list("packs/"))) == 1
    assert all(store.get(n) == d for n, d in [late] + [c for b in early[1:] for c in b])


def test_a_page_larger_than_an_in_list_gets_every_pack_s_live_bytes(meta):
    """A page of 1,000 packs asks their live bytes in parts (older SQLite takes 999
    parameters a statement): every pack of 1,200, one live chunk of a size of its own each."""
    index = SqlChunkIndex(meta.db)
    made = []
    for i in range(1200):
        pack = f"{0x60000000 + i:010x}" + "ab" * 12
        h = hashlib.sha256(i.to_bytes(4, "big")).hexdigest()
        made.append(NewPack(pack, 5000 + i, 4000 + i, [(h, Location(pack, 8, 100 + i, 100 + i))]))
    index.add_packs(made)
    got = list(iter_usage(index, page=1000))
    assert [(u.pack, u.live) for u in got] == [(p.pack, 100 + i) for i, p in enumerate(made)]


def test_a_rewrite_takes_at_most_rewrite_packs_packs(meta, tmp_path, monkeypatch):
    """Small packs far below the target are merged in rewrites of at most `REWRITE_PACKS`
    packs each (so that the lookup of their chunks stays one bounded query), and every chunk
    is still read back."""
    monkeypatch.setattr(packs_module, "REWRITE_PACKS", 3)
    store = pack_store(meta, tmp_path / "blocks")
    batches = [[named(os.urandom(1000))] for _ in range(7)]
    for batch in batches:
        store.put_many(batch)
    rewrites: list[int] = []
    stats = store.compact(grace=0, progress=lambda s: rewrites.append(s.packs_rewritten))
    assert rewrites[:3] == [3, 6, 7] and stats.chunks_moved == 7
    assert len(list(iter_usage(store.index))) == 3
    assert all(store.get(n) == d for b in batches for n, d in b)


class HashCollectingObjects(FolderObjectStore):
    """A folder store that keeps, for each pack put in parts, the parts and the hashers it was
    handed for them (`StreamingPut.put_parts`' ``sha256``), as a store that signs bodies reads them."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.handed: list[tuple[list[bytes], dict[int, str]]] = []

    def put_parts(self, name, parts, sha256=None):  # type: ignore[no-untyped-def]
        pieces = [bytes(p) for p in parts]
        self.handed.append((pieces, {i: h.hexdigest() for i, h in (sha256 or {}).items()}))
        super().put_parts(name, pieces)


def test_a_pack_hands_its_store_the_hashers_that_verified_its_raw_chunks(meta, tmp_path):
    """Each raw chunk's payload in a pack is its plaintext, so the hasher that verified it is
    handed to the store for that part (a store signing the body in chunks does not hash it
    again); a compressed chunk's payload is not its plaintext, and gets none."""
    objects = HashCollectingObjects(tmp_path / "blocks")
    store = PackBlockStore(objects, SqlChunkIndex(meta.db), target_size=256 * 1024)
    raw = [named(os.urandom(100_000)) for _ in range(5)]
    text = [named(b"compressible text %d " % i * 5000) for i in range(2)]
    store.put_many([raw[0], text[0], *raw[1:], text[1]])
    assert len(objects.handed) >= 2
    handed_parts = {hashlib.sha256(parts[i]).hexdigest(): digest for parts, known in objects.handed for i, digest in known.items()}
    assert all(handed_parts[name] == name for name, _ in raw) and len(handed_parts) == len(raw)
    for parts, known in objects.handed:
        assert all(hashlib.sha256(parts[i]).hexdigest() == digest for i, digest in known.items())
    assert all(store.get(n) == d for n, d in raw + text)
