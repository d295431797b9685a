"""`scrub` (what `cubby admin check` runs) on real pack stores: a folder with a SQLite index,
and moto's S3 server. Each kind of damage is made the way it happens (an object deleted, a
file truncated, a byte flipped at rest, an index row lost) and must be found; a store that a
compaction changed under the check must not be reported damaged."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from cubby.blockstore.folder import FolderObjectStore
from cubby.blockstore.index import NewPack, iter_usage
from cubby.blockstore.objects import open_object_store
from cubby.blockstore.packfile import Location, pack_object_name
from cubby.blockstore.packs import PackBlockStore
from cubby.blockstore.scrub import scrub
from cubby.core.compression import CorruptChunk
from cubby.metadata.chunk_index import SqlChunkIndex
from cubby.metadata.damage import files_with_chunks, forget_damaged, held_chunks, referenced_chunks
from cubby.metadata.schema import blocks as blocks_table
from cubby.metadata.schema import chunk_index
from cubby.metadata.store import SqlMetadataStore, open_store
from cubby.model import ChunkRef, CommitRequest
from tests.helpers.s3_servers import S3Server, fresh_prefix


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[SqlMetadataStore]:
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    yield store
    store.close()


def files(meta: SqlMetadataStore, blocks: PackBlockStore, count: int, seed: int = 1) -> dict[str, list[str]]:
    """``count`` committed files of two chunks each (one pack per file), stored as an upload
    stores them (`ingest_chunks`); their chunk names by path."""
    rng = random.Random(seed)
    user, _ = meta.create_user(f"u{seed}")
    out: dict[str, list[str]] = {}
    for i in range(count):
        items = [(hashlib.sha256(c).hexdigest(), c) for c in (rng.randbytes(3000 + i) for _ in range(2))]
        meta.ingest_chunks(user.root_ns, items, blocks)
        path = f"/f{i}.bin"
        refs = tuple(ChunkRef(n, len(c)) for n, c in items)
        req = CommitRequest(path=path, size=sum(r.size for r in refs), chunks=refs)
        assert meta.commit(user.id, user.root_ns, req).committed
        out[path] = [n for n, _ in items]
    return out


def flip_byte(blocks: PackBlockStore, root: Path, chunk: str) -> Location:
    """Flip one bit in the middle of ``chunk``'s stored bytes in its pack file under ``root``
    (a bit flipped at rest); where the chunk is."""
    loc = blocks.index.lookup([chunk])[chunk]
    path = root / pack_object_name(loc.pack)
    raw = bytearray(path.read_bytes())
    raw[loc.pos + loc.stored_len // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    return loc


def pack_of(blocks: PackBlockStore, chunk: str) -> str:
    return blocks.index.lookup([chunk])[chunk].pack


def test_an_intact_store_is_ok_and_every_byte_is_read(meta: SqlMetadataStore, tmp_path: Path) -> None:
    blocks = PackBlockStore(FolderObjectStore(tmp_path / "blocks"), SqlChunkIndex(meta.db))
    made = files(meta, blocks, 3)
    seen: list[int] = []
    report = scrub(blocks, held_chunks(meta.db), read_data=True, progress=lambda r: seen.append(r.chunks_read))
    assert report.ok and report.packs == 3 and report.held_chunks == 6 and report.chunks_read == 6
    assert report.bytes_read == sum(os.path.getsize(p) for p in (tmp_path / "blocks" / "packs").rglob("*.pack"))
    assert seen and seen[-1] == 6
    assert sorted(made) == ["/f0.bin", "/f1.bin", "/f2.bin"]


def test_a_flipped_byte_is_found_only_by_reading_and_names_its_file(meta: SqlMetadataStore, tmp_path: Path) -> None:
    blocks = PackBlockStore(FolderObjectStore(tmp_path / "blocks"), SqlChunkIndex(meta.db))
    made = files(meta, blocks, 3)
    victim = made["/f1.bin"][1]
    flip_byte(blocks, tmp_path / "blocks", victim)
    assert scrub(blocks, held_chunks(meta.db)).ok  # the structure is whole: only reading tells
    report = scrub(blocks, held_chunks(meta.db), read_data=True)
    assert not report.ok and report.chunks_corrupt == [victim] and report.damaged == [victim]
    named, total = files_with_chunks([meta.db], report.damaged)
    assert total == 1 and [(f.path, f.chunks) for f in named] == [("/f1.bin", 1)]


def test_a_finding_whose_chunk_reads_intact_is_told_apart_and_dropped_by_a_repair(
    meta: SqlMetadataStore, tmp_path: Path
) -> None:
    """Servers recorded two chunks as unreadable: one has a flipped byte, the other failed
    once and reads fine (a pack restored since, say). Without reading, the check counts both;
    with --read-data it tells the second apart, and a repair (`clear_unreadable`, as `cubby
    admin check --repair` calls it) drops only that one: the damaged one waits for its bytes."""
    blocks = PackBlockStore(FolderObjectStore(tmp_path / "blocks"), SqlChunkIndex(meta.db))
    made = files(meta, blocks, 2)
    bad, fine = made["/f0.bin"][0], made["/f1.bin"][1]
    loc = flip_byte(blocks, tmp_path / "blocks", bad)
    with pytest.raises(CorruptChunk):
        blocks.get(bad)  # a server's read: its finding
    blocks.index.mark_unreadable({fine: pack_of(blocks, fine)})  # a read that failed once
    shallow = scrub(blocks, held_chunks(meta.db))
    assert shallow.found_unreadable == 2 and shallow.findings_intact == {}
    deep = scrub(blocks, held_chunks(meta.db), read_data=True)
    assert deep.damaged == [bad] and deep.findings_intact == {fine: pack_of(blocks, fine)}
    blocks.index.clear_unreadable(deep.findings_intact)
    assert blocks.index.unreadable(None) == {bad: loc.pack}


def test_a_missing_and_a_truncated_pack_are_found_without_reading(meta: SqlMetadataStore, tmp_path: Path) -> None:
    blocks = PackBlockStore(FolderObjectStore(tmp_path / "blocks"), SqlChunkIndex(meta.db))
    made = files(meta, blocks, 3)
    gone, cut = pack_of(blocks, made["/f0.bin"][0]), pack_of(blocks, made["/f2.bin"][0])
    os.unlink(tmp_path / "blocks" / pack_object_name(gone))
    first, second = sorted(made["/f2.bin"], key=lambda h: blocks.index.lookup([h])[h].pos)
    kept = blocks.index.lookup([first])[first]
    os.truncate(tmp_path / "blocks" / pack_object_name(cut), kept.pos + kept.stored_len)  # cut after its first chunk
    report = scrub(blocks, held_chunks(meta.db))
    assert report.packs_missing == [pack_object_name(gone)] and report.packs_wrong_size == [pack_object_name(cut)]
    assert report.damaged == sorted([*made["/f0.bin"], second])
    deep = scrub(blocks, held_chunks(meta.db), read_data=True)  # what is left of the short pack is read too
    assert deep.damaged == report.damaged and deep.chunks_corrupt == [] and deep.chunks_read == 3
    named, total = files_with_chunks([meta.db], report.damaged, limit=1)
    assert total == 2 and [f.path for f in named] == ["/f0.bin"]  # and /f2.bin, past the limit


def test_a_held_chunk_with_no_place_is_lost(meta: SqlMetadataStore, tmp_path: Path) -> None:
    """The server believes it holds the chunk (a ``blocks`` row) but its index row is gone: lost,
    until an upload of its bytes stores it again."""
    blocks = PackBlockStore(FolderObjectStore(tmp_path / "blocks"), SqlChunkIndex(meta.db))
    made = files(meta, blocks, 2)
    victim = made["/f1.bin"][0]
    meta.db.write(lambda conn: conn.execute(delete(chunk_index).where(chunk_index.c.hash == victim)))
    report = scrub(blocks, held_chunks(meta.db, page=3))
    assert report.held_chunks == 4 and report.chunks_unlocated == [victim] and not report.ok
    # Its next upload stores it: with no place in the index, the chunk is new to the store.
    rng = random.Random(1)
    original = {hashlib.sha256(c).hexdigest(): c for c in (rng.randbytes(3000 + i) for i in range(2) for _ in range(2))}
    assert meta.ingest_chunks(meta.get_user("u1").root_ns, [(victim, original[victim])], blocks) == 1
    assert blocks.get(victim) == original[victim] and scrub(blocks, held_chunks(meta.db)).ok


def test_packs_a_compaction_retired_under_the_check_are_not_damage(meta: SqlMetadataStore, tmp_path: Path) -> None:
    """The check reads the packs the index records, then lists the store. A compaction between
    the two (its packs merged, the old objects deleted once their grace passed) leaves recorded
    packs that are gone: they hold no chunk any more, and nothing is reported."""
    blocks = PackBlockStore(FolderObjectStore(tmp_path / "blocks"), SqlChunkIndex(meta.db))
    files(meta, blocks, 3)
    before = list(iter_usage(blocks.index))
    stats = blocks.compact(grace=0)
    assert stats.packs_rewritten == 3 and stats.packs_deleted == 3

    class StaleUsage:
        """The index as the check would see it had it read the packs before the compaction."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def usage_after(self, after: str, limit: int) -> list[Any]:
            return [u for u in before if u.pack > after][:limit]

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    stale = PackBlockStore(blocks.objects, StaleUsage(blocks.index))  # type: ignore[arg-type]
    report = scrub(stale, held_chunks(meta.db), read_data=True)
    assert report.ok and report.packs == 3 and report.chunks_read == 0


def test_a_pack_deleted_from_the_bucket_is_found(meta: SqlMetadataStore, s3_server: S3Server) -> None:
    objects = open_object_store(s3_server.url(fresh_prefix()))
    blocks = PackBlockStore(objects, SqlChunkIndex(meta.db))
    made = files(meta, blocks, 2)
    assert scrub(blocks, held_chunks(meta.db), read_data=True).ok
    objects.delete(pack_object_name(pack_of(blocks, made["/f1.bin"][0])))
    report = scrub(blocks, held_chunks(meta.db), read_data=True)
    assert len(report.packs_missing) == 1 and report.damaged == sorted(made["/f1.bin"]) and report.chunks_read == 2


def test_a_repair_forgets_damaged_chunks_only_where_they_were_found(meta: SqlMetadataStore, tmp_path: Path) -> None:
    """`forget_damaged` removes a damaged chunk's ``blocks`` row and location; then an upload of
    its bytes stores it again and its file reads whole. A chunk that a compaction moved since it
    was found damaged (its bytes copied as they were) is left alone, and the next check finds
    it in its new pack."""
    blocks = PackBlockStore(FolderObjectStore(tmp_path / "blocks"), SqlChunkIndex(meta.db))
    made = files(meta, blocks, 3)
    rng = random.Random(1)  # the bytes `files` made, again
    original = {hashlib.sha256(c).hexdigest(): c for c in (rng.randbytes(3000 + i) for i in range(3) for _ in range(2))}
    victims = sorted([made["/f0.bin"][0], made["/f1.bin"][0]])
    for name in victims:
        loc = blocks.index.lookup([name])[name]
        pack = tmp_path / "blocks" / pack_object_name(loc.pack)
        raw = bytearray(pack.read_bytes())
        raw[loc.pos + 5] ^= 1
        pack.write_bytes(bytes(raw))
    found = scrub(blocks, held_chunks(meta.db), read_data=True)
    assert found.damaged == victims
    blocks.compact(threshold=0.0, grace=3600)  # the three small packs merged: every chunk moved
    assert forget_damaged(meta.db, blocks.index, found.places) == []
    again = scrub(blocks, held_chunks(meta.db), read_data=True)
    assert again.damaged == victims and again.places != found.places  # copied as they were
    assert forget_damaged(meta.db, blocks.index, again.places) == victims
    assert not blocks.present(victims)
    assert scrub(blocks, held_chunks(meta.db), read_data=True).ok  # nothing held is unreadable now
    meta.ingest_chunks(meta.get_user("u1").root_ns, [(n, original[n]) for n in victims], blocks)  # uploaded again
    for name in victims:
        assert blocks.get(name) == original[name]
    assert scrub(blocks, held_chunks(meta.db), read_data=True).ok


def test_a_chunk_taken_from_under_a_file_is_found_by_its_files(meta: SqlMetadataStore, tmp_path: Path) -> None:
    """What a collector bug would do: a chunk a current file names loses its ``blocks`` row
    and its location. No pack is missing and nothing held is unplaced, so only looking up
    the files' chunks (``referenced``) finds it, and names the file."""
    blocks = PackBlockStore(FolderObjectStore(tmp_path / "blocks"), SqlChunkIndex(meta.db))
    made = files(meta, blocks, 3)
    victim = made["/f2.bin"][1]
    meta.db.write(lambda conn: conn.execute(delete(chunk_index).where(chunk_index.c.hash == victim)))
    meta.db.write(lambda conn: conn.execute(delete(blocks_table).where(blocks_table.c.hash == victim)))
    assert scrub(blocks, held_chunks(meta.db)).ok
    report = scrub(blocks, held_chunks(meta.db), referenced=referenced_chunks([meta.db]))
    assert report.referenced_chunks == 6 and report.chunks_missing == [victim] and report.places == {victim: None}
    named, _ = files_with_chunks([meta.db], report.damaged)
    assert [f.path for f in named] == ["/f2.bin"]


def test_pages_of_two_packs_find_what_one_page_finds(meta: SqlMetadataStore, tmp_path: Path) -> None:
    """The listing and the pack list are walked a page at a time (neither is held): with
    pages of two packs, a store with a missing pack, a truncated one, a flipped byte and an
    orphan spread over many pages gives the report that one page gives."""
    blocks = PackBlockStore(FolderObjectStore(tmp_path / "blocks"), SqlChunkIndex(meta.db))
    made = files(meta, blocks, 9)
    gone, cut = pack_of(blocks, made["/f1.bin"][0]), pack_of(blocks, made["/f5.bin"][0])
    os.unlink(tmp_path / "blocks" / pack_object_name(gone))
    os.truncate(tmp_path / "blocks" / pack_object_name(cut), 20)
    victim = made["/f7.bin"][1]
    flip_byte(blocks, tmp_path / "blocks", victim)
    orphan = tmp_path / "blocks" / pack_object_name("00000000000000aaaaaaaaaaaaaaaa")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"an old pack no index recorded")
    whole = scrub(blocks, held_chunks(meta.db), read_data=True)
    paged = scrub(blocks, held_chunks(meta.db), read_data=True, page_size=2)
    assert paged == whole
    assert whole.packs == 9 and whole.orphan_packs == 1 and whole.packs_missing == [pack_object_name(gone)]
    assert whole.packs_wrong_size == [pack_object_name(cut)] and whole.chunks_corrupt == [victim]
    assert whole.damaged == sorted([*made["/f1.bin"], *made["/f5.bin"], victim])


def test_a_pack_recorded_after_the_listing_is_not_absent(meta: SqlMetadataStore, tmp_path: Path) -> None:
    """An upload beside the check: its pack is put and recorded after the listing was taken
    (here, a listing that leaves it out). It is looked for on its own before it is called
    absent, and found: nothing is reported."""
    objects = FolderObjectStore(tmp_path / "blocks")
    blocks = PackBlockStore(objects, SqlChunkIndex(meta.db))
    made = files(meta, blocks, 3)
    late = pack_object_name(pack_of(blocks, made["/f2.bin"][0]))

    class ListedBefore(FolderObjectStore):
        def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
            return ((name, size) for name, size in super().list(prefix) if name != late)

    seen = PackBlockStore(ListedBefore(tmp_path / "blocks"), blocks.index)
    report = scrub(seen, held_chunks(meta.db), read_data=True)
    assert report.ok and report.packs == 3 and report.packs_absent == [] and report.chunks_read == 4


def test_packs_made_long_before_the_listing_are_not_looked_for_one_by_one(meta: SqlMetadataStore, tmp_path: Path) -> None:
    """A store that is not this index's (every recorded pack unlisted, as a wrong --blocks
    gives): packs made more than an hour before the listing are missing without a lookup of
    each, so that such a check does not make a request per pack."""
    index = SqlChunkIndex(meta.db)
    old = int(time.time()) - 7200
    packs = [f"{old:010x}{i:024x}" for i in range(5)]
    index.add_packs([
        NewPack(p, 100, 90, [(hashlib.sha256(p.encode()).hexdigest(), Location(p, 8, 90, 90))]) for p in packs
    ])
    reads: list[tuple[str, int, int | None]] = []

    class Counting(FolderObjectStore):
        def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
            reads.append((name, offset, length))
            return super().get(name, offset, length)

    report = scrub(PackBlockStore(Counting(tmp_path / "elsewhere"), index), (), page_size=2)
    assert report.packs_absent == sorted(packs) and report.packs_missing == sorted(pack_object_name(p) for p in packs)
    assert reads == []
