"""The Alembic migrations build exactly the schema that schema.py describes, on every engine."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

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
