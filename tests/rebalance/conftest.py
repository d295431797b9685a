"""Two metadata databases on the machine's servers, standing for two shards:
PostgreSQL + PostgreSQL and PostgreSQL + MariaDB."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import MARIADB_URL, POSTGRES_URL, require_service, worker_database
from tests.helpers.fresh_db import fresh_database

PAIRS = {"pg+pg": ("postgresql", "postgresql"), "pg+maria": ("postgresql", "mariadb")}


@pytest.fixture(params=sorted(PAIRS))
def two_urls(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """Two fresh databases (migrated, empty): a namespace's old shard and its new one."""

    a_engine, b_engine = PAIRS[request.param]
    for e in (a_engine, b_engine):
        require_service(e)
    a = worker_database(POSTGRES_URL)
    b = worker_database(POSTGRES_URL, "_b") if b_engine == "postgresql" else worker_database(MARIADB_URL)
    for u in (a, b):
        fresh_database(u)
    yield a, b
