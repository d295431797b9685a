"""Concurrent writers, on every engine: a gap-free journal, no lost update, GC-safe dedup."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from cubby.errors import Conflict
from cubby.metadata.store import SqlMetadataStore, open_store
from tests.metadata.conftest import put_file, random_chunks, request


def test_many_concurrent_commits_give_a_gap_free_journal(db_url, blocks):
    stores = [open_store(db_url) for _ in range(4)]  # separate pools, as separate processes would have
    try:
        user, _ = stores[0].create_user("alice")
        ns = user.root_ns
        stores[0].mkdir(user.id, ns, "/d")

        def work(i: int) -> int:
            s = stores[i % len(stores)]
            return put_file(s, blocks, user.id, ns, f"/d/f{i}", items=random_chunks(1, 64)).rev

        with ThreadPoolExecutor(8) as pool:
            revs = list(pool.map(work, range(80)))
        journal = stores[0].journal(ns, 0, limit=10_000)
        assert [j.jid for j in journal] == list(range(1, len(journal) + 1))
        assert sorted(revs) == sorted(set(revs)) and len(journal) == 81
        assert stores[0].head(ns) == 81
        assert len(stores[0].list(ns, "/d").entries) == 80
    finally:
        for s in stores:
            s.close()


def test_two_writers_same_expected_rev_exactly_one_wins(db_url, blocks):
    a, b = open_store(db_url), open_store(db_url)
    try:
        user, _ = a.create_user("alice")
        ns = user.root_ns
        base = put_file(a, blocks, user.id, ns, "/shared.txt")
        for _ in range(15):
            items = [random_chunks(1, 50), random_chunks(1, 60)]
            for it in items:
                a.ingest_chunks(ns, it, blocks)
            barrier = threading.Barrier(2)
            outcomes: list[object] = [None, None]

            def writer(idx: int, s: SqlMetadataStore) -> None:
                barrier.wait()
                try:
                    outcomes[idx] = s.commit(user.id, ns, request("/shared.txt", items[idx], base.rev)).entry
                except Conflict as exc:
                    outcomes[idx] = exc

            threads = [threading.Thread(target=writer, args=(i, s)) for i, s in enumerate((a, b))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            winners = [o for o in outcomes if not isinstance(o, Conflict)]
            assert len(winners) == 1, outcomes
            current = a.stat(ns, "/shared.txt")
            assert current.rev == winners[0].rev and current.content_hash == winners[0].content_hash
            base = current
        journal = a.journal(ns, 0)
        assert [j.jid for j in journal] == list(range(1, len(journal) + 1))
    finally:
        a.close()
        b.close()


def test_gc_racing_a_deduplicating_commit_never_loses_data(db_url, blocks_for):
    """A commit reuses a chunk that is unreferenced and past its grace period while the
    collector runs: either the commit is told to upload it again, or the chunk survives."""
    committer, collector = open_store(db_url), open_store(db_url)
    blocks, collector_blocks = blocks_for(committer), blocks_for(collector)
    try:
        user, _ = committer.create_user("alice")
        ns = user.root_ns
        committed = 0
        asked_again = 0
        for round_ in range(25):
            items = random_chunks(2, 200)
            committer.ingest_chunks(ns, items, blocks)  # staged, refs = 0: a GC candidate at grace 0
            barrier = threading.Barrier(2)
            result: dict[str, object] = {}

            def commit() -> None:
                barrier.wait()
                result["commit"] = committer.commit(user.id, ns, request(f"/f{round_}", items))

            def gc() -> None:
                barrier.wait()
                result["gc"] = collector.collect_garbage(collector_blocks, grace_seconds=0)

            threads = [threading.Thread(target=commit), threading.Thread(target=gc)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            res = result["commit"]
            if res.committed:
                committed += 1
                _, chunks = committer.blocklist(ns, f"/f{round_}")
                for c in chunks:
                    assert blocks.has(c.hash), f"round {round_}: committed file lost chunk {c.hash}"
                    assert blocks.get(c.hash) == dict(items)[c.hash]
            else:
                asked_again += 1
                assert {n.hash for n in res.needed} <= {h for h, _ in items}
        # After everything, a full GC keeps every committed file whole.
        collector.collect_garbage(collector_blocks, grace_seconds=0)
        for e in committer.list(ns, "/").entries:
            _, chunks = committer.blocklist(ns, e.path)
            assert all(blocks.has(c.hash) for c in chunks)
        assert committed + asked_again == 25
    finally:
        committer.close()
        collector.close()


def test_gc_racing_an_upload_of_the_same_chunk(db_url, blocks_for):
    """An upload of a chunk the collector is deleting ends with the chunk stored and usable."""
    uploader, collector = open_store(db_url), open_store(db_url)
    blocks, collector_blocks = blocks_for(uploader), blocks_for(collector)
    try:
        user, _ = uploader.create_user("alice")
        ns = user.root_ns
        for round_ in range(25):
            items = random_chunks(1, 100)
            uploader.ingest_chunks(ns, items, blocks)
            barrier = threading.Barrier(2)

            def upload() -> None:
                barrier.wait()
                uploader.ingest_chunks(ns, items, blocks)

            def gc() -> None:
                barrier.wait()
                collector.collect_garbage(collector_blocks, grace_seconds=0)

            threads = [threading.Thread(target=upload), threading.Thread(target=gc)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            res = uploader.commit(user.id, ns, request(f"/u{round_}", items))
            if res.committed:
                assert blocks.has(items[0][0])
            else:  # the collector won after the upload's touch was older than the cutoff: re-upload
                uploader.ingest_chunks(ns, items, blocks)
                assert uploader.commit(user.id, ns, request(f"/u{round_}", items)).committed
                assert blocks.has(items[0][0])
    finally:
        uploader.close()
        collector.close()
