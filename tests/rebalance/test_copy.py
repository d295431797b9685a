"""The row copy between two shard databases (`cubby.metadata.nscopy`): a bulk copy while a
writer goes on, then the changes since, leave the same rows on both sides, whatever the
writes were (commits, folder renames and deletes, pruned history, a share, a move between
namespaces rolled back)."""

from __future__ import annotations

import threading

from cubby.blockstore.memory import MemoryBlockStore
from cubby.metadata import nscopy
from cubby.metadata.store import open_store
from tests.metadata.conftest import put_file


def test_bulk_copy_then_changes_since_leave_equal_rows(two_urls):
    a_url, b_url = two_urls
    a, b = open_store(a_url), open_store(b_url)
    blocks = MemoryBlockStore()
    try:
        alice, _ = a.create_user("alice")
        a.create_user("bob")
        ns = alice.root_ns
        for i in range(30):
            put_file(a, blocks, alice.id, ns, f"/docs/d{i % 3}/f{i}.txt")
        put_file(a, blocks, alice.id, ns, "/Shared/x.txt")
        a.sharing.share(alice.id, ns, "/Shared", "bob", "editor")
        stop = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            i = 0
            try:
                while not stop.is_set():
                    put_file(a, blocks, alice.id, ns, f"/live/w{i}.txt")
                    i += 1
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=writer)
        t.start()
        try:
            mark = nscopy.copy_all(a.db, b.db, ns)
        finally:
            stop.set()
            t.join()
        assert not errors
        # Changes the rules must catch without a rev on every row they touch.
        a.move(alice.id, ns, "/docs/d1", "/docs/renamed")
        a.delete(alice.id, ns, "/docs/d2", forget_through=a.head(ns))
        put_file(a, blocks, alice.id, ns, "/docs/d0/f0.txt", expected_rev=a.stat(ns, "/docs/d0/f0.txt").rev)
        mark = a.db.write(lambda conn: nscopy.copy_changes(conn, b.db, ns, mark))
        assert nscopy.rows_of(a.db, ns) == nscopy.rows_of(b.db, ns)
        # Nothing changed since: a second pass changes nothing, and the last one verifies.
        a.db.write(lambda conn: nscopy.copy_changes(conn, b.db, ns, mark, verify=True))
        assert nscopy.rows_of(a.db, ns) == nscopy.rows_of(b.db, ns)
        assert nscopy.delete_all(b.db, ns) > 0
        assert not nscopy.holds(b.db, ns)
        assert all(not rows for rows in nscopy.rows_of(b.db, ns).values())
    finally:
        a.close()
        b.close()
