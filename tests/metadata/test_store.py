"""The metadata store's behaviour, the same on SQLite, PostgreSQL and MariaDB, and on two
shards (PostgreSQL + PostgreSQL, PostgreSQL + MariaDB) with the first user's root on the
shard that is not the directory."""

from __future__ import annotations

import hashlib
import os
import unicodedata

import pytest

from cubby.blockstore.folder import FolderObjectStore
from cubby.blockstore.index import iter_usage
from cubby.blockstore.packfile import pack_object_name
from cubby.blockstore.packs import PackBlockStore
from cubby.core.proofs import proof_hex
from cubby.errors import BadRequest, Conflict, CubbyError, InvalidPath, NotFound, SizeMismatch, Unauthorized
from cubby.metadata.chunk_index import SqlChunkIndex
from cubby.metadata.possession import Claim
from cubby.model import ChunkRef, CommitRequest, CommitResult
from tests.metadata.conftest import chunk, put_file, random_chunks, request


@pytest.fixture
def store(deployed):
    return deployed


@pytest.fixture
def alice(store):
    user, token = store.create_user("alice")
    return user, token


def test_user_token_lifecycle(store):
    user, token = store.create_user("alice")
    p = store.authenticate(token)
    assert p.user_id == user.id and p.root_ns == user.root_ns and p.namespaces == {user.root_ns: "owner"}
    tid, second = store.create_token(user.id, "laptop")
    assert store.authenticate(second).token_id == tid
    store.revoke_token(user.id, tid)
    with pytest.raises(Unauthorized, match="revoked"):
        store.authenticate(second)
    assert store.authenticate(token).user_id == user.id
    with pytest.raises(Unauthorized):
        store.authenticate("cby_not-a-token")
    with pytest.raises(Conflict):
        store.create_user("ALICE")
    bob, _ = store.create_user("bob")
    with pytest.raises(NotFound):
        store.revoke_token(bob.id, p.token_id)  # alice's token is not bob's to revoke
    assert bob.root_ns != user.root_ns
    listed = {u["name"]: u for u in store.list_users()}
    assert listed["alice"]["tokens"] == 1 and listed["bob"]["tokens"] == 1  # the revoked one is not counted
    assert listed["alice"]["id"] == user.id and listed["alice"]["root_ns"] == user.root_ns
    assert [u["id"] for u in store.list_users()] == sorted(u["id"] for u in listed.values())


@pytest.mark.parametrize("name", ["", "a b", "../x", "x" * 65, "a\x00"])
def test_bad_user_names(store, name):
    with pytest.raises(BadRequest):
        store.create_user(name)


def test_commit_protocol(store, blocks, alice):
    user, _ = alice
    ns = user.root_ns
    items = random_chunks(3)
    req = request("/docs/report.txt", items)
    first = store.commit(user.id, ns, req)
    assert not first.committed
    assert [n.hash for n in first.needed] == [h for h, _ in items]
    with pytest.raises(NotFound):  # invisible until committed
        store.stat(ns, "/docs/report.txt")
    assert store.head(ns) == 0
    store.ingest_chunks(ns, items, blocks)
    done = store.commit(user.id, ns, req)
    assert done.committed and done.entry.size == 3000
    e = store.stat(ns, "/DOCS/Report.TXT")
    assert e.path == "/docs/report.txt" and e.rev == done.entry.rev
    _, chunks = store.blocklist(ns, "/docs/report.txt")
    assert [c.hash for c in chunks] == [h for h, _ in items]
    ops = [(j.jid, j.op, j.path) for j in store.journal(ns, 0)]
    assert ops == [(1, "mkdir", "/docs"), (2, "add", "/docs/report.txt")]


def test_stale_expected_rev_is_a_conflict_and_changes_nothing(store, blocks, alice):
    user, _ = alice
    ns = user.root_ns
    v1 = put_file(store, blocks, user.id, ns, "/a.txt")
    v2 = put_file(store, blocks, user.id, ns, "/a.txt", expected_rev=v1.rev)
    head = store.head(ns)
    items = random_chunks(1)
    store.ingest_chunks(ns, items, blocks)
    with pytest.raises(Conflict, match=f"revision {v2.rev}"):
        store.commit(user.id, ns, request("/a.txt", items, expected_rev=v1.rev))
    with pytest.raises(Conflict, match="already exists"):
        store.commit(user.id, ns, request("/a.txt", items, expected_rev=None))
    assert store.head(ns) == head
    assert store.stat(ns, "/a.txt").content_hash == v2.content_hash


def test_a_commit_bound_to_be_refused_is_refused_before_it_asks_for_chunks(store, blocks, alice):
    """A stale revision, a file where a folder must go, a folder where the file must go: the
    commit says so at once, before it names missing chunks the client would otherwise send
    for nothing, and writes nothing; with every check passed, it asks for them as always."""
    user, _ = alice
    ns = user.root_ns
    v1 = put_file(store, blocks, user.id, ns, "/a.txt")
    put_file(store, blocks, user.id, ns, "/a.txt", expected_rev=v1.rev)
    store.mkdir(user.id, ns, "/folder")
    head = store.head(ns)
    items = random_chunks(2)  # never stored: every commit below is missing both
    with pytest.raises(Conflict, match="changed: it is at revision"):
        store.commit(user.id, ns, request("/a.txt", items, expected_rev=v1.rev))
    with pytest.raises(Conflict, match="already exists"):
        store.commit(user.id, ns, request("/a.txt", items))
    with pytest.raises(Conflict) as under:
        store.commit(user.id, ns, request("/a.txt/deeper/b.bin", items))
    assert under.value.code == "not_a_folder"
    with pytest.raises(Conflict) as folder:
        store.commit(user.id, ns, request("/folder", items))
    assert folder.value.code == "is_a_folder"
    [batch_under, batch_ok] = store.commit_many(user.id, ns, [request("/a.txt/c.bin", items), request("/new/c.bin", items)])
    assert isinstance(batch_under, Conflict) and batch_under.code == "not_a_folder"
    assert isinstance(batch_ok, CommitResult) and [n.hash for n in batch_ok.needed] == [h for h, _ in items]
    assert store.head(ns) == head
    with pytest.raises(NotFound):
        store.stat(ns, "/new")


def test_case_and_unicode_variants_cannot_coexist(store, blocks, alice):
    user, _ = alice
    ns = user.root_ns
    put_file(store, blocks, user.id, ns, "/A.txt")
    with pytest.raises(Conflict):
        put_file(store, blocks, user.id, ns, "/a.txt")
    nfc = unicodedata.normalize("NFC", "/café.txt")
    nfd = unicodedata.normalize("NFD", "/café.txt")
    put_file(store, blocks, user.id, ns, nfd)
    assert store.stat(ns, nfc).path == nfc  # stored in NFC whatever the client sent
    with pytest.raises(Conflict):
        put_file(store, blocks, user.id, ns, nfc)
    names = [e.path for e in store.list(ns, "/").entries]
    assert names == ["/A.txt", nfc]


@pytest.mark.parametrize(
    "path", ["/a/../b", "/a/./b", "a//b", "/a\x00b", "/" + "x" * 256, "/a/" + "y/" * 2000 + "z", "/a\\b", "/ a"]
)
def test_bad_paths_are_refused_and_change_nothing(store, blocks, alice, path):
    user, _ = alice
    ns = user.root_ns
    items = random_chunks(1)
    store.ingest_chunks(ns, items, blocks)
    with pytest.raises(InvalidPath):
        store.commit(user.id, ns, request(path, items))
    with pytest.raises(InvalidPath):
        store.mkdir(user.id, ns, path)
    assert store.head(ns) == 0 and store.list(ns, "/", recursive=True).entries == []


def test_size_and_chunk_validation(store, blocks, alice):
    user, _ = alice
    ns = user.root_ns
    items = random_chunks(2)
    store.ingest_chunks(ns, items, blocks)
    good = request("/f", items)
    with pytest.raises(SizeMismatch):
        store.commit(user.id, ns, CommitRequest("/f", good.size + 1, good.chunks))
    lying = tuple(ChunkRef(c.hash, c.size + 1) for c in good.chunks)
    with pytest.raises(SizeMismatch):
        store.commit(user.id, ns, CommitRequest("/f", sum(c.size for c in lying), lying))
    with pytest.raises(BadRequest):
        store.commit(user.id, ns, CommitRequest("/f", 1, (ChunkRef("XYZ", 1),)))
    with pytest.raises(BadRequest):
        store.commit(user.id, ns, CommitRequest("/f", 0, (ChunkRef(items[0][0], 0),)))
    unknown = hashlib.sha256(b"never uploaded").hexdigest()
    res = store.commit(user.id, ns, CommitRequest("/f", 5, (ChunkRef(unknown, 5),)))
    assert not res.committed and [n.hash for n in res.needed] == [unknown]
    assert store.head(ns) == 0


def test_empty_file(store, blocks, alice):
    user, _ = alice
    e = store.commit(user.id, user.root_ns, CommitRequest("/empty", 0, ())).entry
    assert e.size == 0 and e.content_hash == hashlib.sha256(b"").hexdigest()


def test_folder_move_is_one_journal_entry(store, blocks, alice):
    user, _ = alice
    ns = user.root_ns
    for i in range(5):
        put_file(store, blocks, user.id, ns, f"/src/sub/f{i}.txt")
    head = store.head(ns)
    moved = store.move(user.id, ns, "/src", "/dst/inner")
    assert moved.path == "/dst/inner" and moved.kind == "folder"
    new = store.journal(ns, head)
    assert [(j.op, j.path) for j in new] == [("mkdir", "/dst"), ("move", "/dst/inner")]
    assert new[-1].old_path == "/src" and new[-1].node_id == moved.node_id
    listed = [e.path for e in store.list(ns, "/dst", recursive=True).entries]
    assert listed == ["/dst/inner", "/dst/inner/sub"] + [f"/dst/inner/sub/f{i}.txt" for i in range(5)]
    with pytest.raises(NotFound):
        store.stat(ns, "/src/sub/f0.txt")
    with pytest.raises(BadRequest):
        store.move(user.id, ns, "/dst", "/dst/inner/x")
    put_file(store, blocks, user.id, ns, "/other.txt")
    with pytest.raises(Conflict):
        store.move(user.id, ns, "/other.txt", "/dst/inner/sub/f1.txt")
    # A case-only rename of a folder keeps the node and rewrites the children's display paths.
    store.move(user.id, ns, "/dst/inner", "/dst/INNER")
    assert store.stat(ns, "/dst/inner/sub/f1.txt").path == "/dst/INNER/sub/f1.txt"


def test_listing_pages_parents_before_children(store, blocks, alice):
    user, _ = alice
    ns = user.root_ns
    names = ["/b/x", "/a b/c", "/a/z", "/a/y/q", "/a-b"]
    for n in names:
        put_file(store, blocks, user.id, ns, n, items=random_chunks(1, 10))
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list(ns, "/", recursive=True, cursor=cursor, limit=2)
        seen.extend(e.path for e in page.entries)
        cursor = page.cursor
        if not page.has_more:
            break
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 9
    for i, p in enumerate(seen):
        parent = p.rsplit("/", 1)[0]
        if parent:
            assert parent in seen[:i], f"{p} listed before its parent"
    assert [e.name for e in store.list(ns, "/a").entries] == ["y", "z"]
    with pytest.raises(BadRequest):
        store.list(ns, "/", cursor="%%%")


def test_delete_history_restore(store, blocks, alice):
    user, _ = alice
    ns = user.root_ns
    v1 = put_file(store, blocks, user.id, ns, "/d/f.txt")
    v2 = put_file(store, blocks, user.id, ns, "/d/f.txt", expected_rev=v1.rev)
    with pytest.raises(Conflict):
        store.delete(user.id, ns, "/d/f.txt", expected_rev=v1.rev)
    store.delete(user.id, ns, "/d")
    with pytest.raises(NotFound):
        store.stat(ns, "/d/f.txt")
    hist = store.history(ns, "/d/f.txt")
    assert [h.rev for h in hist] == [v2.rev, v1.rev] and hist[0].deleted
    restored = store.restore(user.id, ns, "/d/f.txt", v1.rev)
    assert restored.content_hash == v1.content_hash and restored.rev > v2.rev
    assert restored.node_id == v1.node_id  # the same file, back with its history
    assert [h.rev for h in store.history(ns, "/d/f.txt")] == [restored.rev, v2.rev, v1.rev]
    with pytest.raises(NotFound):
        store.restore(user.id, ns, "/d/f.txt", 999_999)
    with pytest.raises(NotFound):
        store.history(ns, "/never")


def test_folder_delete_refused_when_something_below_changed_since(store, blocks, alice):
    """A sync client deletes a folder as of the journal id it has read: a file added or edited
    below it after that id survives (the delete is refused and changes nothing)."""
    user, _ = alice
    ns = user.root_ns
    kept = put_file(store, blocks, user.id, ns, "/d/a.txt")
    folder = store.stat(ns, "/d")
    seen = store.head(ns)
    late = put_file(store, blocks, user.id, ns, "/d/sub/late.txt")
    with pytest.raises(Conflict) as err:
        store.delete(user.id, ns, "/d", folder.rev, unchanged_since=seen)
    assert err.value.code == "folder_changed"
    assert store.stat(ns, "/d/sub/late.txt").rev == late.rev and store.head(ns) == late.rev
    edited = put_file(store, blocks, user.id, ns, "/d/a.txt", expected_rev=kept.rev)
    with pytest.raises(Conflict):
        store.delete(user.id, ns, "/d", folder.rev, unchanged_since=late.rev)
    store.delete(user.id, ns, "/d", folder.rev, unchanged_since=edited.rev)
    with pytest.raises(NotFound):
        store.stat(ns, "/d/a.txt")


def test_commit_many_reports_each_outcome(store, blocks, alice):
    user, _ = alice
    ns = user.root_ns
    put_file(store, blocks, user.id, ns, "/taken")
    items = random_chunks(3)
    store.ingest_chunks(ns, items[:2], blocks)
    reqs = [request("/one", items[:1]), request("/taken", items[1:2]), request("/three", items[2:]),
            request("/two", items[1:2])]
    out = store.commit_many(user.id, ns, reqs)
    assert out[0].committed and isinstance(out[1], Conflict) and not out[2].committed and out[3].committed
    journal = store.journal(ns, 0)
    assert [j.jid for j in journal] == list(range(1, len(journal) + 1))


def _batch_requests(items: list[tuple[str, bytes]], missing: tuple[str, bytes], taken_rev: int) -> list[CommitRequest]:
    """A batch with every kind of outcome: new files in the root and in folders made on the
    way, chunks shared between files and repeated in one file, an empty file, an edit at its
    expected revision and one at a stale revision, a chunk not stored, a chunk of the wrong
    size, a bad path, and the same path twice."""
    a, b, c = items
    wrong = (ChunkRef(a[0], len(a[1]) + 1),)
    return [
        request("/one", [a]),
        request("/d/two", [a, b]),
        request("/d/e/three", [b, b, c]),
        CommitRequest(path="/d/empty", size=0, chunks=()),
        request("/taken", [c], expected_rev=taken_rev),
        request("/stale", [a], expected_rev=taken_rev + 100),
        request("/d/needs", [a, missing, b]),
        CommitRequest(path="/d/wrong", size=wrong[0].size, chunks=wrong),
        request("/", [a]),
        request("/d/two", [c]),
        request("/D/Two", [c], expected_rev=None),
    ]


_OWN = ("ns_id", "user_id", "created_at")
"""What differs between the two namespaces' rows whatever the path: whose, and when."""


def _outcome(out: object) -> object:
    """A commit's answer without what names its namespace (the nonces are bound to it)."""
    if isinstance(out, CubbyError):
        return type(out).__name__, out.code
    assert isinstance(out, CommitResult)
    if out.entry is not None:
        return {k: v for k, v in out.entry.to_dict().items() if k not in _OWN}
    return [n.hash for n in out.needed]


def test_commit_many_answers_and_writes_what_single_commits_do(store, blocks):
    """The batch path takes each file's texts before the lock and checks the batch's chunks in
    one pass; its answers, journal, nodes and revisions equal those of the same requests
    committed one at a time in another namespace that holds the same files and chunks."""
    items = random_chunks(3)
    missing = chunk(os.urandom(700))
    before = random_chunks(2)
    results = []
    for name in ("one-by-one", "batched"):
        user, _ = store.create_user(name)
        ns = user.root_ns
        taken = put_file(store, blocks, user.id, ns, "/taken", before[:1])
        put_file(store, blocks, user.id, ns, "/stale", before[1:])
        store.ingest_chunks(ns, items, blocks)
        reqs = _batch_requests(items, missing, taken.rev)
        if name == "batched":
            answers = store.commit_many(user.id, ns, reqs)
        else:
            answers = []
            for req in reqs:
                try:
                    answers.append(store.commit(user.id, ns, req))
                except CubbyError as exc:
                    answers.append(exc)
        paths_ = ["/one", "/d/two", "/d/e/three", "/d/empty", "/taken", "/stale"]
        results.append(
            {
                "answers": [_outcome(a) for a in answers],
                "journal": [{k: v for k, v in j.to_dict().items() if k not in _OWN} for j in store.journal(ns, 0)],
                "files": [(_outcome(CommitResult(entry=e)), refs) for e, refs in (store.blocklist(ns, p) for p in paths_)],
                "history": [[(r.rev, r.path, r.size, r.content_hash) for r in store.history(ns, p)] for p in paths_],
            }
        )
    one, batched = results
    assert batched["answers"] == one["answers"]
    assert [a for a in one["answers"] if isinstance(a, dict)] and [a for a in one["answers"] if isinstance(a, list)]
    assert batched == one


def test_blocklists_answer_each_path_as_blocklist_does(store, blocks, alice):
    """The many-path read (a few statements for hundreds of paths) gives each path what the
    single read gives it: a file's entry and chunk list, or the single read's error."""
    user, _ = alice
    ns = user.root_ns
    store.mkdir(user.id, ns, "/d")
    items = random_chunks(2)
    store.ingest_chunks(ns, items, blocks)
    store.commit_many(user.id, ns, [request(f"/d/f{i:03d}", items[i % 2 :]) for i in range(600)])
    put_file(store, blocks, user.id, ns, "/d/F-edited")
    put_file(store, blocks, user.id, ns, "/d/F-edited", random_chunks(1), expected_rev=store.stat(ns, "/d/F-edited").rev)
    asked = ["/d/f000", "/D/F599", "/d", "/missing", "/d/f001", "/d/f-EDITED", "/d/f000", *(f"/d/f{i:03d}" for i in range(2, 600))]
    got = store.blocklists(ns, asked)
    assert len(got) == len(asked)
    for path, answer in zip(asked, got, strict=True):
        try:
            want = store.blocklist(ns, path)
        except (NotFound, Conflict) as exc:
            assert type(answer) is type(exc) and answer.code == exc.code, path
            continue
        assert answer == want, path


def test_journal_paging(store, blocks, alice):
    user, _ = alice
    ns = user.root_ns
    for i in range(25):
        store.mkdir(user.id, ns, f"/f{i:02d}")
    got = []
    after = 0
    while batch := store.journal(ns, after, limit=7):
        got.extend(batch)
        after = batch[-1].jid
    assert [j.jid for j in got] == list(range(1, 26)) and store.head(ns) == 25


def test_hash_only_claims_learn_and_get_nothing(store, blocks, alice):
    alice_user, _ = alice
    bob, _ = store.create_user("bob")
    secret = random_chunks(1)
    put_file(store, blocks, alice_user.id, alice_user.root_ns, "/secret", items=secret)
    h = secret[0][0]
    never = hashlib.sha256(b"nobody has this").hexdigest()
    # Bob knows the hash only: the answer has the same shape whether or not it is held.
    held = store.commit(bob.id, bob.root_ns, request("/x", secret))
    not_held = store.commit(bob.id, bob.root_ns, CommitRequest("/y", 1000, (ChunkRef(never, 1000),)))
    assert not held.committed and not not_held.committed
    assert len(held.needed) == len(not_held.needed) == 1 and len(held.needed[0].nonce) == len(not_held.needed[0].nonce)
    assert store.chunk_readable([bob.root_ns], [h]) == set()
    assert store.chunk_readable([alice_user.root_ns], [h]) == {h}
    assert store.readable_sizes([bob.root_ns], [h, never]) == {}
    assert store.readable_sizes([alice_user.root_ns], [h, never]) == {h: len(secret[0][1])}
    # A forged proof is refused and grants nothing.
    size = len(secret[0][1])
    checked = store.accept_proofs(bob.id, bob.root_ns, [Claim(h, size, "00" * 32)], blocks)
    assert checked.proven == [] and checked.rejected == [h]
    # A proof for another user's nonce is refused too.
    alice_nonce = store.challenge(alice_user.id, bob.root_ns, h, size)
    forged = proof_hex(bytes.fromhex(alice_nonce), secret[0][1])
    assert store.accept_proofs(bob.id, bob.root_ns, [Claim(h, size, forged)], blocks).proven == []
    assert not store.commit(bob.id, bob.root_ns, request("/x", secret)).committed
    # With the bytes, Bob proves possession and commits without uploading.
    nonce = held.needed[0].nonce
    proof = proof_hex(bytes.fromhex(nonce), secret[0][1])
    # The size is bound into the nonce: the same proof under another claimed size is refused.
    assert store.accept_proofs(bob.id, bob.root_ns, [Claim(h, size + 1, proof)], blocks).proven == []
    checked = store.accept_proofs(bob.id, bob.root_ns, [Claim(h, size, proof)], blocks)
    assert (checked.proven, checked.rejected) == ([h], [])
    assert store.commit(bob.id, bob.root_ns, request("/x", secret)).committed
    assert store.chunk_readable([bob.root_ns], [h]) == {h}


def test_gc_removes_only_unreferenced_chunks(store, blocks, alice):
    user, _ = alice
    ns = user.root_ns
    kept = put_file(store, blocks, user.id, ns, "/kept")
    orphan = random_chunks(1)
    store.ingest_chunks(ns, orphan, blocks)  # uploaded, never committed
    assert store.collect_garbage(blocks, grace_seconds=3600).deleted == 0  # within grace
    stats = store.collect_garbage(blocks, grace_seconds=0)
    assert stats.deleted == 1 and stats.bytes_freed == 1000
    assert not blocks.has(orphan[0][0])
    _, chunks = store.blocklist(ns, "/kept")
    assert all(blocks.has(c.hash) for c in chunks)
    # Deleted files keep their chunks: history can restore them.
    store.delete(user.id, ns, "/kept")
    store.collect_garbage(blocks, grace_seconds=0)
    assert all(blocks.has(c.hash) for c in chunks)
    assert store.restore(user.id, ns, "/kept", kept.rev).content_hash == kept.content_hash
    # A GC'd chunk is asked for again, not silently reused.
    res = store.commit(user.id, ns, request("/again", orphan))
    assert not res.committed


def test_gc_tells_its_progress_batch_by_batch(store, blocks, alice):
    """`collect_garbage` reports its counts so far after each batch of candidates (500), so
    that `cubby gc` on a large store shows it moving."""
    user, _ = alice
    store.ingest_chunks(user.root_ns, random_chunks(700), blocks)  # uploaded, never committed
    seen: list[tuple[int, int, int]] = []
    stats = store.collect_garbage(
        blocks, grace_seconds=0, progress=lambda s: seen.append((s.examined, s.deleted, s.bytes_freed))
    )
    assert seen == [(500, 500, 500_000), (700, 700, 700_000)]
    assert (stats.examined, stats.deleted, stats.bytes_freed) == seen[-1]


def test_gc_adopts_chunks_left_without_a_record(store, blocks, alice):
    """Bytes stored by a writer that died before recording them are collected after the grace."""
    _user, _ = alice
    (h, data), = random_chunks(1)
    blocks.put(h, data)  # as if the process died right after the block store's put
    assert store.collect_garbage(blocks, grace_seconds=3600).deleted == 0
    assert blocks.has(h)  # adopted, and within its grace period
    assert store.collect_garbage(blocks, grace_seconds=0).deleted == 1
    assert not blocks.has(h)


def test_an_upload_batch_to_the_pack_store_is_one_write_transaction(store, tmp_path):
    """The pack store's index rows go into the upload's own transaction with its ``blocks``
    and ``ns_chunks`` rows (`PackBlockStore.stage_many`): one commit for a batch, not two; and
    the chunks are then committable and readable, and a second upload of them stores nothing."""
    user, _ = store.create_user("uploader")
    ns = user.root_ns
    chunks_db = store.router.chunks
    packs = PackBlockStore(FolderObjectStore(tmp_path / "packs"), SqlChunkIndex(chunks_db))
    items = random_chunks(5, size=3000)
    writes: list[str] = []
    chunks_db.observe = lambda kind, _seconds: writes.append(kind) if kind == "write" else None
    try:
        assert store.ingest_chunks(ns, items, packs) == 5
    finally:
        chunks_db.observe = None
    assert writes == ["write"]
    assert store.commit(user.id, ns, request("/up", items)).committed
    assert dict(packs.read_many([h for h, _ in items])) == dict(items)
    assert store.ingest_chunks(ns, items, packs) == 0


def test_a_chunk_one_process_could_not_read_is_mended_by_an_upload_to_another(store, tmp_path):
    """Two blocks processes on one store (two pack stores, each with its own memory, on one
    index and one folder): the first fails to read chunks whose pack was lost, and records
    them on the index; the second, which never read them, receives their bytes in an upload,
    stores them again and moves them, so both read them again and the finding is gone. An
    upload of a chunk nobody found unreadable stores nothing, on either."""
    user, _ = store.create_user("mender")
    ns = user.root_ns
    objects = FolderObjectStore(tmp_path / "packs")
    first = PackBlockStore(objects, SqlChunkIndex(store.router.chunks))
    second = PackBlockStore(objects, SqlChunkIndex(store.router.chunks))
    lost, fine = random_chunks(3, size=2000), random_chunks(1, size=3000)
    assert store.ingest_chunks(ns, lost, first) == 3 and store.ingest_chunks(ns, fine, first) == 1
    assert store.commit(user.id, ns, request("/f", lost + fine)).committed
    gone = first.index.lookup([lost[0][0]])[lost[0][0]].pack
    objects.delete(pack_object_name(gone))
    with pytest.raises(CubbyError):
        first.get(lost[0][0])
    # Every chunk of the lost pack is recorded, for every process to see; the fine one is not.
    assert second.index.unreadable([h for h, _ in lost + fine]) == {h: gone for h, _ in lost}
    packs = sorted(n for n, _ in objects.list("packs/"))
    assert store.ingest_chunks(ns, fine, second) == 0 and sorted(n for n, _ in objects.list("packs/")) == packs
    assert store.ingest_chunks(ns, lost, second) == 0  # not new to the metadata: stored again all the same
    assert dict(first.read_many([h for h, _ in lost])) == dict(lost) == dict(second.read_many([h for h, _ in lost]))
    assert first.index.unreadable([h for h, _ in lost]) == {} and first.index.unreadable_count() == 0
    assert {first.index.lookup([h])[h].pack for h, _ in lost} != {gone}


def test_an_upload_mixing_new_chunks_and_indexed_ones_without_rows_records_them_all(store, tmp_path):
    """A staged upload (`PackBlockStore.stage_many`) whose batch holds chunks it writes now and
    chunks the pack index already holds with no ``blocks`` row yet (stored by a writer that
    died before recording them): every one gets its row and is committable and readable, and
    only the new ones count as stored."""
    user, _ = store.create_user("mixer")
    ns = user.root_ns
    packs = PackBlockStore(FolderObjectStore(tmp_path / "packs"), SqlChunkIndex(store.router.chunks))
    indexed, fresh = random_chunks(3, size=2000), random_chunks(4, size=2000)
    packs.put_many(indexed)  # in the index, never recorded by an upload
    assert store.ingest_chunks(ns, indexed[:1] + fresh + indexed[1:], packs) == 4
    assert store.commit(user.id, ns, request("/mixed", indexed + fresh)).committed
    assert dict(packs.read_many([h for h, _ in indexed + fresh])) == dict(indexed + fresh)


def test_the_pack_list_is_walked_in_pages_on_every_engine(deployed, tmp_path):
    """`iter_usage` and `known_among` are plain queries by primary key and by the index's pack
    column, with no join: on every engine and shard layout the pages give each pack once in id
    order with its live bytes, whatever their size, and a compaction walking two packs at a
    time merges the small ones and drops the dead one, losing nothing."""
    packs = PackBlockStore(FolderObjectStore(tmp_path / "packs"), SqlChunkIndex(deployed.router.chunks), target_size=8000)
    batches = [random_chunks(1, size=1000) for _ in range(5)]
    for batch in batches:
        packs.put_many(batch)
    dead = packs.index.lookup([batches[0][0][0]])[batches[0][0][0]].pack
    packs.delete(batches[0][0][0])
    whole = list(iter_usage(packs.index, page=100))
    assert len(whole) == 5 and [u.pack for u in whole] == sorted(u.pack for u in whole)
    assert {u.pack: u.live for u in whole} == {u.pack: 0 if u.pack == dead else 1001 for u in whole}
    assert all(list(iter_usage(packs.index, page=n)) == whole for n in (1, 2, 4))
    assert packs.index.known_among([u.pack for u in whole] + ["0" * 34]) == {u.pack for u in whole}
    stats = packs.compact(grace=3600, page_size=2)
    assert (stats.packs_rewritten, stats.chunks_moved) == (5, 4)
    assert packs.index.known_among([dead]) == {dead}  # retired, its object kept for the grace
    assert dict(packs.read_many([h for b in batches[1:] for h, _ in b])) == dict(c for b in batches[1:] for c in b)
