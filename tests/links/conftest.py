"""One live server per metadata engine (SQLite, PostgreSQL, MariaDB) for the link tests, and users on it.

Link test modules share one xdist group (``pytestmark``), so each engine's server starts once.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cubby.client.api import ApiClient
from cubby.client.upload import upload_file
from tests.conftest import DB_ENGINES, MARIADB_URL, POSTGRES_URL, require_service, worker_database
from tests.helpers.fresh_db import fresh_database
from tests.helpers.live_server import LiveServer


def _links_database(engine_name: str) -> str:
    """A database of the link tests' own on the shared server (beside this worker's), so that
    other tests wiping the worker's database never pull it from under the long-lived server."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    require_service(engine_name)
    url = make_url(worker_database(POSTGRES_URL if engine_name == "postgresql" else MARIADB_URL))
    name = f"{url.database}_links"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if engine_name == "postgresql":
                if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
            else:
                conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4"))
    finally:
        engine.dispose()
    out = url.set(database=name).render_as_string(hide_password=False)
    fresh_database(out)
    return out


@pytest.fixture(scope="session", params=DB_ENGINES)
def link_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    url = None if request.param == "sqlite" else _links_database(request.param)
    data = tmp_path_factory.mktemp(f"links-{request.param}") / "data"
    with LiveServer(data, db_url=url) as server:
        yield server


@dataclass
class Person:
    name: str
    token: str
    api: ApiClient


@dataclass
class World:
    server: LiveServer
    alice: Person
    bob: Person
    tmp: Path

    def anon(self) -> httpx.Client:
        """A client with no credentials at all: what anyone holding a link URL has."""
        return httpx.Client(base_url=self.server.url, timeout=60)

    def put(self, remote: str, data: bytes, who: Person | None = None) -> None:
        local = self.tmp / f"up-{random.random()}"
        local.write_bytes(data)
        upload_file((who or self.alice).api, local, remote)
        local.unlink()


@pytest.fixture
def world(link_server: LiveServer, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    suffix = str(abs(hash(request.node.nodeid)) % 10**8)
    ta, tb = link_server.add_user(f"alice{suffix}"), link_server.add_user(f"bob{suffix}")
    a, b = ApiClient(link_server.url, ta), ApiClient(link_server.url, tb)
    yield World(link_server, Person("alice", ta, a), Person("bob", tb, b), tmp_path)
    a.close()
    b.close()
