"""The sharing operations of the metadata store itself, on SQLite, PostgreSQL and MariaDB and on
two shards (the owner's root on one, the shared folder wherever it is placed): the cut is
consistent, a write that reaches the old namespace after the share is refused retryably and
changes nothing, and the share copies current revisions only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cubby.blockstore.memory import MemoryBlockStore
from cubby.errors import Conflict, NamespaceMoved, NotFound
from cubby.metadata.store import SqlMetadataStore
from tests.conftest import DB_ENGINES, TWO_SHARD_PARAMS
from tests.metadata.conftest import open_deployment, put_file, random_chunks, request


@pytest.fixture(params=[*DB_ENGINES, *TWO_SHARD_PARAMS])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlMetadataStore]:
    """Owner and invitee on different shards on the two-shard deployments (alice: far, bob: near)."""
    s = open_deployment(request.param, tmp_path_factory)
    yield s
    s.close()


def test_share_copies_current_revisions_only(store):
    blocks = MemoryBlockStore()
    a, _ = store.create_user("alice")
    store.create_user("bob")
    e1 = put_file(store, blocks, a.id, a.root_ns, "/P/doc.txt")
    e2 = put_file(store, blocks, a.id, a.root_ns, "/P/doc.txt", expected_rev=e1.rev)
    gone_items = random_chunks(1)
    put_file(store, blocks, a.id, a.root_ns, "/P/gone.txt", gone_items)
    store.delete(a.id, a.root_ns, "/P/gone.txt")
    ch = store.sharing.share(a.id, a.root_ns, "/P", "bob", "viewer")
    ns = ch.ns_id
    assert [r.rev for r in store.history(ns, "/doc.txt")] == [store.stat(ns, "/doc.txt").rev]
    assert store.stat(ns, "/doc.txt").content_hash == e2.content_hash
    with pytest.raises(NotFound):
        store.history(ns, "/gone.txt")
    assert [(j.op, j.path) for j in store.journal(ns, 0)] == [("add", "/doc.txt")]
    # The folder's chunks are usable in the new namespace without proof; the deleted file's are not.
    _, chunks = store.blocklist(ns, "/doc.txt")
    assert store.chunk_readable([ns], [c.hash for c in chunks]) == {c.hash for c in chunks}
    assert store.chunk_readable([ns], [gone_items[0][0]]) == set()
    root_j = store.journal(a.root_ns, 0)
    assert (root_j[-1].op, root_j[-1].kind, root_j[-1].path) == ("mount", "mount", "/P")
    assert store.stat(a.root_ns, "/P").target_ns == ns


def test_writes_reaching_the_old_namespace_are_refused_retryably(store):
    blocks = MemoryBlockStore()
    a, _ = store.create_user("alice")
    store.create_user("bob")
    doc = put_file(store, blocks, a.id, a.root_ns, "/P/sub/doc.txt")
    ns = store.sharing.share(a.id, a.root_ns, "/P", "bob", "editor").ns_id
    heads = store.head(a.root_ns), store.head(ns)
    items = random_chunks(1)
    store.ingest_chunks(a.root_ns, items, blocks)
    for attempt in (
        lambda: store.commit(a.id, a.root_ns, request("/P/new.txt", items)),
        lambda: store.commit(a.id, a.root_ns, request("/P/sub/doc.txt", items, expected_rev=doc.rev)),
        lambda: store.delete(a.id, a.root_ns, "/P/sub/doc.txt"),
        lambda: store.mkdir(a.id, a.root_ns, "/P/sub/x"),
        lambda: store.move(a.id, a.root_ns, "/P/sub/doc.txt", "/elsewhere.txt"),
        lambda: store.stat(a.root_ns, "/P/sub/doc.txt"),
        lambda: store.list(a.root_ns, "/P"),
    ):
        with pytest.raises(NamespaceMoved) as exc:
            attempt()
        assert exc.value.retryable and exc.value.code == "namespace_moved"
    out = store.commit_many(a.id, a.root_ns, [request("/P/a.txt", items), request("/Q/b.txt", items)])
    assert isinstance(out[0], NamespaceMoved) and out[1].committed
    assert store.head(ns) == heads[1]
    # Resolved again, the same requests land in the shared namespace; a revision read before
    # the share still names the (unchanged) copy, and a wrong one is still a conflict.
    with pytest.raises(Conflict):
        store.commit(a.id, ns, request("/sub/doc.txt", items, expected_rev=doc.rev + 1000), readable=[a.root_ns])
    edited = store.commit(a.id, ns, request("/sub/doc.txt", items, expected_rev=doc.rev), readable=[a.root_ns])
    assert edited.committed and edited.entry.rev > store.sharing.cut(ns)
    with pytest.raises(Conflict):
        store.delete(a.id, ns, "/sub/doc.txt", expected_rev=doc.rev)  # changed since the copy


def test_a_delete_that_raced_the_share_leaves_no_history(store):
    blocks = MemoryBlockStore()
    a, _ = store.create_user("alice")
    store.create_user("bob")
    put_file(store, blocks, a.id, a.root_ns, "/P/f.txt")
    put_file(store, blocks, a.id, a.root_ns, "/P/d/g.txt")
    ns = store.sharing.share(a.id, a.root_ns, "/P", "bob", "editor").ns_id
    cut = store.sharing.cut(ns)
    store.delete(a.id, ns, "/f.txt", forget_through=cut)
    store.delete(a.id, ns, "/d", forget_through=cut)
    assert store.history(ns, "/f.txt") == [] and store.history(ns, "/d/g.txt") == []
    with pytest.raises(NotFound):
        store.blocklist(ns, "/f.txt", rev=1)
    # ...while an ordinary delete keeps history, as everywhere else.
    put_file(store, blocks, a.id, ns, "/h.txt")
    store.delete(a.id, ns, "/h.txt")
    assert len(store.history(ns, "/h.txt")) == 1
