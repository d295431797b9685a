"""What `cubby admin check` reads of the metadata (`cubby.metadata.damage`), on every engine
and on two shards: the held chunks in pages, and the current files a damaged chunk breaks."""

from __future__ import annotations

from cubby.blockstore.memory import MemoryBlockStore
from cubby.metadata.damage import files_with_chunks, held_chunks, referenced_chunks
from cubby.metadata.store import SqlMetadataStore
from tests.metadata.conftest import put_file, random_chunks, request


def test_held_chunks_come_in_pages_in_hash_order(deployed: SqlMetadataStore, blocks: MemoryBlockStore) -> None:
    user, _ = deployed.create_user("hana")
    for i in range(4):
        put_file(deployed, blocks, user.id, user.root_ns, f"/f{i}", items=random_chunks(2, 100 + i))
    pages = list(held_chunks(deployed.router.chunks, page=3))
    flat = [h for p in pages for h in p]
    assert [len(p) for p in pages] == [3, 3, 2] and flat == sorted(flat) and len(set(flat)) == 8


def test_the_current_files_with_a_damaged_chunk_are_named_on_every_shard(
    deployed: SqlMetadataStore, blocks: MemoryBlockStore
) -> None:
    """Two users (on two shards when there are two): each file whose current version holds a
    damaged chunk is named once, with how many of its chunks are damaged; a deleted file and a
    file whose damaged chunk is only in an older revision are not (their bytes serve no one
    now: history can be restored only from what is readable)."""
    a, _ = deployed.create_user("ann")
    b, _ = deployed.create_user("bob")
    bad = random_chunks(2, 300)
    put_file(deployed, blocks, a.id, a.root_ns, "/docs/report.pdf", items=[bad[0], *random_chunks(1)])
    put_file(deployed, blocks, b.id, b.root_ns, "/both.bin", items=bad)
    put_file(deployed, blocks, b.id, b.root_ns, "/gone.bin", items=[bad[0]])
    deployed.delete(b.id, b.root_ns, "/gone.bin")
    old = put_file(deployed, blocks, a.id, a.root_ns, "/edited.txt", items=[bad[1]])
    put_file(deployed, blocks, a.id, a.root_ns, "/edited.txt", items=random_chunks(1), expected_rev=old.rev)
    put_file(deployed, blocks, a.id, a.root_ns, "/fine.txt")
    named, total = files_with_chunks(deployed.router.shards.values(), [h for h, _ in bad])
    assert total == 2
    assert sorted((f.ns_id, f.path, f.chunks) for f in named) == sorted(
        [(a.root_ns, "/docs/report.pdf", 1), (b.root_ns, "/both.bin", 2)]
    )
    first, total = files_with_chunks(deployed.router.shards.values(), [h for h, _ in bad], limit=1)
    assert total == 2 and len(first) == 1
    assert files_with_chunks(deployed.router.shards.values(), []) == ([], 0)


def test_referenced_chunks_are_those_of_current_files_page_by_page(deployed: SqlMetadataStore, blocks: MemoryBlockStore) -> None:
    """Every chunk of every current file, over both users' namespaces (and shards), a page per
    two files: a deleted file's chunks and an older revision's are not there."""
    a, _ = deployed.create_user("cho")
    b, _ = deployed.create_user("dev")
    now: set[str] = set()
    for user, path in ((a, "/x"), (a, "/y"), (b, "/z")):
        items = random_chunks(2, 200)
        put_file(deployed, blocks, user.id, user.root_ns, path, items=items)
        now.update(h for h, _ in items)
    gone = random_chunks(1, 300)
    put_file(deployed, blocks, b.id, b.root_ns, "/gone", items=gone)
    deployed.delete(b.id, b.root_ns, "/gone")
    old = random_chunks(1, 400)
    first = put_file(deployed, blocks, a.id, a.root_ns, "/edited", items=old)
    newer = random_chunks(1, 500)
    put_file(deployed, blocks, a.id, a.root_ns, "/edited", items=newer, expected_rev=first.rev)
    now.update(h for h, _ in newer)
    pages = list(referenced_chunks(deployed.router.shards.values(), files=2))
    assert sum(len(p) for p in pages) == len(now) == 7 and {h for p in pages for h in p} == now
    assert len(pages) >= 2 and all(p == sorted(p) for p in pages)


def test_a_forgotten_chunk_is_asked_for_again_by_the_next_commit(deployed: SqlMetadataStore, blocks: MemoryBlockStore) -> None:
    """`forget_damaged` on every engine and on two shards: the chunk's ``blocks`` row goes
    (under the collector's row lock), so a commit naming it answers that it is needed instead
    of trusting it; a chunk recorded in another place than the one it was found damaged in
    (moved since) is left alone."""
    from cubby.metadata.chunk_index import SqlChunkIndex
    from cubby.metadata.damage import forget_damaged

    user, _ = deployed.create_user("eve")
    lost, moved = random_chunks(1, 600), random_chunks(1, 700)
    put_file(deployed, blocks, user.id, user.root_ns, "/a", items=lost + moved)
    index = SqlChunkIndex(deployed.router.chunks)  # the memory store indexes nothing: no place
    places = {lost[0][0]: None, moved[0][0]: "somepack"}
    assert forget_damaged(deployed.router.chunks, index, places) == [lost[0][0]]
    held = {h for page in held_chunks(deployed.router.chunks) for h in page}
    assert lost[0][0] not in held and moved[0][0] in held
    res = deployed.commit(user.id, user.root_ns, request("/b", lost + moved))
    assert res.entry is None and [n.hash for n in res.needed] == [lost[0][0]]
