"""Bring a metadata database to the newest schema with Alembic, from inside the program.

Run at every start of a store: upgrading an up-to-date database is a no-op (a read of its
revision: Alembic is not even loaded), and a fresh one gets every table. The migration scripts
ship inside the package, so no alembic.ini is needed.

Any number of processes may start at once (many workers, a fleet behind a load balancer): the
upgrade runs under a lock that only one of them holds at a time, so exactly one creates the
tables and the others find the database at the newest revision and do nothing. Without it,
concurrent first starts race to create ``alembic_version`` and all but one crash. The lock is
the engine's own: an advisory lock on PostgreSQL, ``GET_LOCK`` on MariaDB/MySQL (both held by
a session and released if it dies), and an ``flock`` on a file beside an SQLite database
(released by the kernel when the process dies).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, exc, text

from cubby.errors import Unavailable

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).with_name("migrations")
LOCK_NAME = "cubby_schema_migration"
LOCK_KEY = 0x637562627900  # PostgreSQL advisory locks take a 64-bit key: "cubby\0"
LOCK_WAIT_SECONDS = 300
HEAD = "0014"
"""The newest revision in ``migrations/versions`` (a test holds it to Alembic's own answer):
a database already there opens without loading Alembic, a sixth of a start's imports."""


def alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Hold the database-wide migration lock for the duration of the block."""
    dialect = engine.dialect.name
    if dialect == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield  # a private in-memory database: nobody to race with
            return
        fd = os.open(f"{database}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return
    with engine.connect() as raw:
        conn = raw.execution_options(isolation_level="AUTOCOMMIT")
        if dialect == "postgresql":
            conn.execute(text(f"SET lock_timeout = '{LOCK_WAIT_SECONDS}s'"))
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            return
        got = conn.execute(text("SELECT GET_LOCK(:n, :t)"), {"n": LOCK_NAME, "t": LOCK_WAIT_SECONDS}).scalar()
        if got != 1:
            raise Unavailable(
                f"another process has held the schema migration lock for {LOCK_WAIT_SECONDS} s; "
                "is a migration stuck? Try again when it is done."
            )
        try:
            yield
        finally:
            conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": LOCK_NAME})


def revision_of(engine: Engine) -> str | None:
    """The revision the database at ``engine`` is at; None for one Alembic never touched (or
    one at several heads, which no release of cubby makes)."""
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except exc.DBAPIError:
        return None  # no such table: a new database
    return found[0] if len(found) == 1 else None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade to ``revision`` under the migration lock (a no-op when already there). The
    usual start, of a database at `HEAD`, is one read and no lock."""
    if revision == "head" and revision_of(engine) == HEAD:
        return
    from alembic import command

    cfg = alembic_config()
    with migration_lock(engine), engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
