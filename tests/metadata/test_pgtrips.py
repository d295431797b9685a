"""PostgreSQL's namespace transaction in two round trips (`cubby.metadata.pgtrips`): counted on
the wire through a relay, and shown to keep every transaction all-or-nothing with BEGIN folded
into the lock's message and COMMIT into the write's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from cubby.blockstore.memory import MemoryBlockStore
from cubby.metadata.nstxn import NamespaceTxn, write_namespace
from cubby.metadata.schema import settings
from cubby.metadata.store import SqlMetadataStore, open_store
from cubby.model import User
from tests.conftest import db_url_for
from tests.helpers.fresh_db import fresh_database
from tests.helpers.turn_counter import TurnCounter, turn_counter
from tests.metadata.conftest import put_file, random_chunks, request
from tests.metadata.test_engine import kill_other_connections


@pytest.fixture
def relayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SqlMetadataStore, TurnCounter, str]]:
    """A store on this worker's fresh PostgreSQL database, reached through a `TurnCounter`."""
    url = db_url_for("postgresql", tmp_path_factory)
    fresh_database(url)
    parsed = make_url(url)
    with turn_counter(parsed.host or "127.0.0.1", parsed.port or 5432) as relay:
        relayed_url = parsed.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
        store = open_store(relayed_url)
        try:
            yield store, relay, relayed_url
        finally:
            store.close()


def _user(store: SqlMetadataStore) -> User:
    return store.create_user("ann")[0]


def _setting(store: SqlMetadataStore, key: str) -> str | None:
    return store.db.read(lambda c: c.execute(select(settings.c.value).where(settings.c.key == key)).scalar())


def test_a_single_file_commit_is_two_round_trips(relayed: tuple[SqlMetadataStore, TurnCounter, str]) -> None:
    store, relay, _ = relayed
    blocks = MemoryBlockStore()
    user = _user(store)
    ns = user.root_ns
    first = put_file(store, blocks, user.id, ns, "/docs/a.txt")  # refused (chunks needed), then committed
    assert first.rev == 2  # the folder, then the file
    for i, (path, expected) in enumerate([("/docs/b.txt", None), ("/docs/a.txt", first.rev), ("/new/c.txt", None)]):
        items = random_chunks(2)
        store.ingest_chunks(ns, items, blocks)
        before = relay.turns
        done = store.commit(user.id, ns, request(path, items, expected))
        assert done.committed, done
        assert relay.turns - before == 2, (path, i)  # BEGIN + lock + read; write + COMMIT
    assert [j.path for j in store.journal(ns, 0)] == ["/docs", "/docs/a.txt", "/docs/b.txt", "/docs/a.txt", "/new", "/new/c.txt"]


def test_a_batch_of_commits_is_two_round_trips_too(relayed: tuple[SqlMetadataStore, TurnCounter, str]) -> None:
    store, relay, _ = relayed
    blocks = MemoryBlockStore()
    user = _user(store)
    ns = user.root_ns
    put_file(store, blocks, user.id, ns, "/warm.txt")  # the connection has prepared the write
    files = {f"/batch/{n}.txt": random_chunks(2) for n in ("a", "b", "c")}
    before = relay.turns
    refused = store.commit_many(user.id, ns, [request(p, items) for p, items in files.items()])
    assert relay.turns - before == 2 and all(not r.committed for r in refused)  # chunks needed
    store.ingest_chunks(ns, [c for items in files.values() for c in items], blocks)
    before = relay.turns
    done = store.commit_many(user.id, ns, [request(p, items) for p, items in files.items()])
    assert relay.turns - before == 2 and all(r.committed for r in done)


def test_a_commit_lands_after_psycopg_deallocated_the_prepared_write(
    relayed: tuple[SqlMetadataStore, TurnCounter, str],
) -> None:
    """psycopg runs ``DEALLOCATE ALL`` on a rollback: before the transaction (seen by the lock's
    message) and even between the lock and the write (the write fails, nothing commits, and
    `Database.write` runs the transaction again, which prepares it anew)."""
    store, _, _ = relayed
    db = store.db
    user = _user(store)
    ns = user.root_ns
    head = store.head(ns)
    write_namespace(db, ns, user.id, lambda tx: tx.next_jid())  # prepares it on the kept connection
    db.write(lambda c: c.exec_driver_sql("DEALLOCATE ALL"))
    write_namespace(db, ns, user.id, lambda tx: tx.next_jid())
    runs: list[int] = []

    def deallocating(tx: NamespaceTxn) -> int:
        runs.append(1)
        if len(runs) == 1:
            tx.conn.exec_driver_sql("DEALLOCATE ALL")
        return tx.next_jid()

    assert write_namespace(db, ns, user.id, deallocating) == head + 3
    assert len(runs) == 2
    assert store.head(ns) == head + 3  # once each: the failed attempt left nothing


def test_a_write_that_fails_with_its_commit_rolls_back_what_ran_before_it(
    relayed: tuple[SqlMetadataStore, TurnCounter, str],
) -> None:
    store, _, _ = relayed
    db = store.db
    user = _user(store)
    ns = user.root_ns
    put_file(store, MemoryBlockStore(), user.id, ns, "/a.txt")  # journal entry 1
    head = store.head(ns)

    def clashing(tx: NamespaceTxn) -> None:
        tx.conn.execute(insert(settings).values(key="pgtrips-clash", value="x"))
        tx.next_jid()
        tx.journal("mkdir", node_id=99, parent_id=0, kind="folder", path="/x", rev=1)  # jid 1 is taken

    with pytest.raises(IntegrityError):
        write_namespace(db, ns, user.id, clashing)
    assert _setting(store, "pgtrips-clash") is None
    assert store.head(ns) == head

    def raising(tx: NamespaceTxn) -> None:
        tx.conn.execute(insert(settings).values(key="pgtrips-raise", value="x"))
        tx.next_jid()
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        write_namespace(db, ns, user.id, raising)
    assert _setting(store, "pgtrips-raise") is None
    assert store.head(ns) == head


def test_a_namespace_write_inside_another_write_commits_with_it(
    relayed: tuple[SqlMetadataStore, TurnCounter, str],
) -> None:
    """Joined to an outer `Database.write`, the namespace write sends no COMMIT of its own: the
    outer transaction's failure afterwards undoes it."""
    store, _, _ = relayed
    db = store.db
    user = _user(store)
    ns = user.root_ns
    head = store.head(ns)

    def outer(conn: object) -> None:
        write_namespace(db, ns, user.id, lambda tx: tx.next_jid())
        raise RuntimeError("after the inner write")

    with pytest.raises(RuntimeError):
        db.write(outer)
    assert store.head(ns) == head
    db.write(lambda conn: write_namespace(db, ns, user.id, lambda tx: tx.next_jid()))
    assert store.head(ns) == head + 1


def test_a_commit_on_a_dropped_connection_runs_again_on_a_new_one(
    relayed: tuple[SqlMetadataStore, TurnCounter, str],
) -> None:
    store, _, url = relayed
    blocks = MemoryBlockStore()
    user = _user(store)
    ns = user.root_ns
    put_file(store, blocks, user.id, ns, "/a.txt")
    assert kill_other_connections(url, store.db) >= 1
    entry = put_file(store, blocks, user.id, ns, "/b.txt")
    assert [j.path for j in store.journal(ns, 0)] == ["/a.txt", "/b.txt"] and entry.rev == 2
