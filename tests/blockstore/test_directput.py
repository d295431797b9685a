"""Packs a client puts in the bucket itself (`cubby.blockstore.directput`): the layout is the
pack format readers know, each chunk of the signed body is one of cubby's chunks or bytes the
server made, and a pack is adopted only once it is stored whole. The bucket here is a folder
holding what a client's PUT would have stored; the PUT itself is exercised on moto behind a
checking proxy and on Ceph (tests/integration/test_s3_direct_puts.py)."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from cubby.blockstore.directput import GAP, Literal, PackNotStored, direct_layout
from cubby.blockstore.folder import FolderObjectStore
from cubby.blockstore.objects import SIGNED_CHUNK_MIN, stored_size
from cubby.blockstore.packfile import pack_object_name, read_trailer
from cubby.blockstore.packs import PackBlockStore, new_pack_id
from cubby.blockstore.scrub import scrub
from cubby.core.chunking import MIN_DIRECT
from cubby.core.compression import RAW
from cubby.errors import ChunkMismatch
from cubby.metadata.chunk_index import SqlChunkIndex
from cubby.metadata.store import SqlMetadataStore, open_store


def named(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data


def some_chunks(seed: int, n: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [named(rng.randbytes(rng.randint(MIN_DIRECT, 300_000))) for _ in range(n)]


def body_of(layout_parts: list[Literal | tuple[str, int]], chunks: dict[str, bytes]) -> bytes:
    """The pack a client's PUT stores: each part's bytes in order."""
    return b"".join(p.data() if isinstance(p, Literal) else chunks[p[0]] for p in layout_parts)


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[SqlMetadataStore]:
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    yield store
    store.close()


def test_the_layout_is_a_pack_readers_know_with_each_body_chunk_signed_for_its_bytes() -> None:
    chunks = some_chunks(1, 7)
    by_name = dict(chunks)
    pack = new_pack_id()
    layout = direct_layout(pack, [(n, len(d)) for n, d in chunks])
    assert layout == direct_layout(pack, [(n, len(d)) for n, d in chunks])  # no state between plan and adoption
    data = body_of(layout.parts, by_name)
    assert len(data) == layout.size
    # The trailer is the one the layout promised, and every blob is the codec byte and the chunk.
    found = read_trailer(pack, len(data), lambda at, n: data[at : at + n])
    assert found == layout.entries
    for name, loc in found:
        blob = data[loc.pos : loc.pos + loc.stored_len]
        assert blob[0] == RAW and blob[1:] == by_name[name] and loc.plain_len == len(by_name[name])
    # The signed body: one chunk per part, each at least S3's least chunk but the last, each
    # signed for the SHA-256 of exactly its bytes (a chunk's own name, for the client's chunks).
    signed = layout.signed_chunks()
    assert len(signed) == len(layout.parts) == 2 * len(chunks) + 1
    at = 0
    for (size, sha), part in zip(signed, layout.parts):
        assert hashlib.sha256(data[at : at + size]).hexdigest() == sha
        if isinstance(part, Literal):
            assert part.size == GAP or part is layout.parts[-1]
        else:
            assert sha == part[0]
        at += size
    assert at == len(data)
    assert all(size >= SIGNED_CHUNK_MIN for size, _ in signed[:-1])


def test_a_folder_store_hands_out_no_puts(meta: SqlMetadataStore, tmp_path: Path) -> None:
    """Only a bucket that checks every chunk's signature may be handed a client's bytes."""
    store = PackBlockStore(FolderObjectStore(tmp_path / "blocks"), SqlChunkIndex(meta.db))
    assert store.direct_put([(n, len(d)) for n, d in some_chunks(2, 2)]) is None


def test_a_stored_pack_is_adopted_and_served_and_a_missing_or_short_one_is_not(meta: SqlMetadataStore, tmp_path: Path) -> None:
    objects = FolderObjectStore(tmp_path / "blocks")
    store = PackBlockStore(objects, SqlChunkIndex(meta.db))
    held = named(os.urandom(50_000))
    store.put_many([held])  # already placed: its copy in the client's pack is dead from the start
    chunks = [*some_chunks(3, 4), held]
    listed = [(n, len(d)) for n, d in chunks]
    pack = new_pack_id()
    layout = direct_layout(pack, listed)
    data = body_of(layout.parts, dict(chunks))

    with pytest.raises(PackNotStored):  # not sent
        store.stage_direct_put(pack, listed, meta.db)
    objects.put(pack_object_name(pack), data[:-1])
    with pytest.raises(PackNotStored):  # not the size it was laid out to be
        store.stage_direct_put(pack, listed, meta.db)
    assert not any(store.has(n) for n, _ in chunks[:-1])

    objects.delete(pack_object_name(pack))
    objects.put(pack_object_name(pack), data)
    assert stored_size(objects, pack_object_name(pack)) == len(data)
    staged = store.stage_direct_put(pack, listed, meta.db)
    assert staged.new == [True, True, True, True, False]
    staged.index()
    for name, d in chunks:
        assert store.get(name) == d
    assert dict(store.read_many([n for n, _ in chunks], verify=True)) == dict(chunks)
    assert store.index.lookup([held[0]])[held[0]].pack != pack  # the chunk placed before keeps its place


def test_a_client_pack_is_compacted_rebuilt_and_swept_as_any_pack(meta: SqlMetadataStore, tmp_path: Path) -> None:
    """`cubby admin check` reads it as any pack. Its gaps are neither live nor dead: a pack whose chunks mostly died is rewritten
    (the live chunk copied into an ordinary pack), an index lost is rebuilt from its trailer,
    and a pack put but never adopted is deleted once old, as any orphan."""
    objects = FolderObjectStore(tmp_path / "blocks")
    store = PackBlockStore(objects, SqlChunkIndex(meta.db))
    chunks = some_chunks(5, 4)
    listed = [(n, len(d)) for n, d in chunks]
    pack = new_pack_id()
    objects.put(pack_object_name(pack), body_of(direct_layout(pack, listed).parts, dict(chunks)))
    store.stage_direct_put(pack, listed, meta.db).index()
    assert store.rebuild_index() == 0  # recorded already
    report = scrub(store, [[n for n, _ in chunks]], read_data=True)  # `cubby admin check` reads it whole
    assert report.ok and report.chunks_read == len(chunks)
    for name, _ in chunks[:3]:
        store.delete(name)
    stats = store.compact(threshold=0.5, grace=0)
    assert stats.packs_rewritten == 1 and stats.chunks_moved == 1
    survivor, data = chunks[3]
    assert store.get(survivor) == data and store.index.lookup([survivor])[survivor].pack != pack
    assert stored_size(objects, pack_object_name(pack)) is None  # retired and, with no grace, deleted

    unadopted = new_pack_id()
    objects.put(pack_object_name(unadopted), body_of(direct_layout(unadopted, listed[:1]).parts, dict(chunks)))
    assert store.compact(orphan_age=3600).orphans_deleted == 0  # young: a client may still say it is stored
    assert store.compact(orphan_age=0).orphans_deleted == 1


def test_a_chunk_collected_between_stage_and_rows_is_stored_again_from_the_pack_in_one_of_the_servers_own(
    meta: SqlMetadataStore, tmp_path: Path
) -> None:
    """A chunk placed elsewhere when the pack was staged, then collected before the upload's
    rows: its bytes are read back from the client's pack, verified, and stored in a pack of the
    server's, so that the client's pack keeps the payload it was recorded with (its dead share
    right) and nothing new points into a pack a collector may have judged dead."""
    objects = FolderObjectStore(tmp_path / "blocks")
    store = PackBlockStore(objects, SqlChunkIndex(meta.db))
    held = named(os.urandom(40_000))
    store.put_many([held])
    first_home = store.index.lookup([held[0]])[held[0]].pack
    chunks = [*some_chunks(7, 2), held]
    listed = [(n, len(d)) for n, d in chunks]
    pack = new_pack_id()
    objects.put(pack_object_name(pack), body_of(direct_layout(pack, listed).parts, dict(chunks)))
    staged = store.stage_direct_put(pack, listed, meta.db)
    assert staged.new == [True, True, False]
    staged.index()
    store.delete(held[0])  # the collector takes it before the upload's rows are written
    assert not store.has(held[0])

    staged.again([held[0]])
    assert store.get(held[0]) == held[1]
    home = store.index.lookup([held[0]])[held[0]].pack
    assert home not in (pack, first_home)
    usage = {u.pack: u for u in store.index.usage_after("", 100)}
    fresh_bytes = sum(len(d) + 1 for _, d in chunks[:2])  # each stored raw: a codec byte and the chunk
    assert usage[pack].payload == usage[pack].live == fresh_bytes


def test_a_chunk_read_back_from_a_damaged_pack_is_refused_and_not_indexed(meta: SqlMetadataStore, tmp_path: Path) -> None:
    """The bytes read back are verified against the chunk's name before they are stored."""
    objects = FolderObjectStore(tmp_path / "blocks")
    store = PackBlockStore(objects, SqlChunkIndex(meta.db))
    held = named(os.urandom(40_000))
    store.put_many([held])
    listed = [(held[0], len(held[1]))]
    pack = new_pack_id()
    layout = direct_layout(pack, listed)
    body = bytearray(body_of(layout.parts, {held[0]: held[1]}))
    loc = layout.entries[0][1]
    body[loc.pos + 100] ^= 0xFF  # one byte of the chunk's copy in the pack, flipped
    objects.put(pack_object_name(pack), bytes(body))
    staged = store.stage_direct_put(pack, listed, meta.db)
    store.delete(held[0])
    with pytest.raises(ChunkMismatch):
        staged.again([held[0]])
    assert not store.has(held[0])
