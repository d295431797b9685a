"""A namespace moved while writers commit to it and readers list it, in one process through
`Rerouting` (the server's store): every acknowledged commit is on the new shard, the journal
has no gap, no reader was refused (PostgreSQL + PostgreSQL, PostgreSQL + MariaDB)."""

from __future__ import annotations

import threading
import time

from cubby.blockstore.memory import MemoryBlockStore
from cubby.errors import CubbyError
from cubby.metadata import nscopy
from cubby.metadata.rebalance import NamespaceMover
from cubby.metadata.rerouting import Rerouting
from cubby.metadata.store import open_store
from tests.metadata.conftest import put_file


def test_writes_and_reads_during_a_move(two_urls):
    a_url, b_url = two_urls
    store = open_store(a_url, shards={"a": a_url, "b": b_url}, place_new="a")
    front = Rerouting(store)
    blocks = MemoryBlockStore()
    try:
        user, _ = store.create_user("alice")
        ns = user.root_ns
        for i in range(200):
            put_file(front, blocks, user.id, ns, f"/base/d{i % 7}/f{i}.txt")
        stop = threading.Event()
        acked: dict[str, int] = {}
        problems: list[str] = []

        def writer(k: int) -> None:
            i = 0
            while not stop.is_set():
                try:
                    e = put_file(front, blocks, user.id, ns, f"/w{k}/f{i}.txt")
                    acked[e.path] = e.rev
                except CubbyError as exc:
                    problems.append(f"writer {k}: {exc!r}")
                i += 1

        def reader() -> None:
            while not stop.is_set():
                try:
                    front.list(ns, "/", recursive=True)
                    front.journal(ns, 0)
                except CubbyError as exc:
                    problems.append(f"reader: {exc!r}")

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)] + [threading.Thread(target=reader)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            result = NamespaceMover(store.router, grace=0.2).move(ns, "b")
            moved_at = len(acked)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not problems, problems[:5]
        assert result.target == "b" and len(acked) > moved_at  # writers went on at the new shard
        assert store.router.placement(ns).shard == "b"
        assert not nscopy.holds(store.router.shard_db("a"), ns)
        for path, rev in acked.items():
            assert front.stat(ns, path).rev == rev, path
        jids = [e.jid for e in front.journal(ns, 0, limit=10_000)]
        assert jids == list(range(1, front.head(ns) + 1))
    finally:
        store.close()


def test_a_server_with_an_old_cached_placement_goes_on_at_the_new_shard(two_urls):
    """The server's cache still names the old shard (the move ran in a process that shares no
    cache with it, and the old copy is already deleted): its next write and its reads find no
    namespace there (`NamespaceGone`), forget the placement and go on at the new shard."""
    from cubby.cache.memory import MemoryCache
    from cubby.cache.store import CachedStore

    a_url, b_url = two_urls
    shards = {"a": a_url, "b": b_url}
    server_store = open_store(a_url, shards=shards, place_new="a")
    server = CachedStore(Rerouting(server_store), MemoryCache())  # as `cubby serve` builds it
    admin = open_store(a_url, shards=shards)
    try:
        user, _ = server_store.create_user("alice")
        ns = user.root_ns
        server.mkdir(user.id, ns, "/before")
        assert server.stat(ns, "/before").kind == "folder"  # placement "a" is cached now
        NamespaceMover(admin.router, grace=0).move(ns, "b")
        assert not nscopy.holds(admin.router.shard_db("a"), ns)
        entry = server.mkdir(user.id, ns, "/after")
        assert entry.rev == server.head(ns) == admin.head(ns)
        assert {e.path for e in server.list(ns, "/").entries} == {"/before", "/after"}
        assert admin.stat(ns, "/after").rev == entry.rev
    finally:
        server_store.close()
        admin.close()
