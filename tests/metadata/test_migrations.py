"""The Alembic migrations build exactly the schema that schema.py describes, on every engine."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from cubby.metadata.schema import metadata
from cubby.metadata.store import open_store


def test_migrated_schema_matches_the_models(db_url):
    store = open_store(db_url)
    try:
        with store.db.writer.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": False})
            diff = [d for d in compare_metadata(ctx, metadata) if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version")]
        assert diff == []
    finally:
        store.close()


def test_upgrade_is_idempotent(db_url):
    open_store(db_url).close()
    store = open_store(db_url)  # a second start migrates nothing and keeps the data
    try:
        user, token = store.create_user("alice")
        store.close()
        store = open_store(db_url)
        assert store.authenticate(token).user_id == user.id
    finally:
        store.close()


def test_head_is_the_newest_migration():
    """`migrate.HEAD` lets a start skip Alembic; a new migration that does not move it would
    leave every database already at the old head without that migration."""
    from alembic.script import ScriptDirectory

    from cubby.metadata import migrate

    assert ScriptDirectory.from_config(migrate.alembic_config()).get_current_head() == migrate.HEAD


def test_a_database_at_the_head_opens_without_alembic(db_url):
    """The second start reads the revision and loads no Alembic; a database behind the head
    (stamped back to 0013: migrating it to 0014 again drops and makes one index) loads it and
    is migrated."""
    import subprocess
    import sys

    from sqlalchemy import create_engine, text

    open_store(db_url).close()
    script = (
        "import sys\n"
        "from cubby.metadata.store import open_store\n"
        "open_store(sys.argv[1]).close()\n"
        "print('alembic' in sys.modules)\n"
    )
    run = [sys.executable, "-c", script, db_url]
    assert subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip() == "False"
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0013'"))
    finally:
        engine.dispose()
    out = subprocess.run(run, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"


def test_sharding_migration_places_every_namespace_on_main_and_copies_members(db_url):
    """Migration 0009 on a database from before sharding: its namespaces are shard ``main``'s,
    its members and link tokens are copied to the directory's ``memberships`` and
    ``link_tokens``, and new namespace ids start above the old ones."""
    from sqlalchemy import create_engine, text

    from cubby.metadata import migrate

    engine = create_engine(db_url)
    try:
        migrate.upgrade(engine, "0004")
        with engine.begin() as conn:
            for ns in (7, 9):
                conn.execute(text(
                    "INSERT INTO namespaces (ns_id, kind, owner_id, head, next_node, created_at) VALUES (:n, 'root', 1, 0, 1, 0)"
                ), {"n": ns})
            conn.execute(text(
                "INSERT INTO members (ns_id, user_id, role, state, created_at) VALUES (9, 2, 'editor', 'active', 0)"
            ))
            conn.execute(text(
                "INSERT INTO links (ns_id, link_id, node_id, token_hash, created_by, created_at)"
                " VALUES (9, 'l1', 3, 'th', 2, 0)"
            ))
    finally:
        engine.dispose()
    store = open_store(db_url)
    try:
        from cubby.metadata.schema import link_tokens, memberships, placements

        placed = store.db.read(lambda c: sorted(tuple(r) for r in c.execute(select(placements.c.ns_id, placements.c.shard))))
        assert placed == [(7, "main"), (9, "main")]
        copied = store.db.read(lambda c: [tuple(r) for r in c.execute(select(memberships))])
        assert copied == [(2, 9, "editor", "active")]
        tokens = store.db.read(lambda c: [tuple(r) for r in c.execute(select(link_tokens))])
        assert tokens == [("th", "l1", 9)]
        user, _ = store.create_user("alice")
        assert user.root_ns == 10, "the counter starts above the ids from before sharding"
    finally:
        store.close()
