"""Shared fixtures: real services on this machine, and the rule for when they are missing.

Under ``CI=true`` a test that needs PostgreSQL, MariaDB, Redis or NATS fails when it cannot reach
it; elsewhere it skips with the reason. No test talks to a mock of these services.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SERVICES = {
    "postgresql": ("127.0.0.1", 5432),
    "mariadb": ("127.0.0.1", 3306),
    "redis": ("127.0.0.1", 6379),
    "nats": ("127.0.0.1", 4222),
}

POSTGRES_URL = os.environ.get("CUBBY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("CUBBY_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_service(name: str) -> None:
    """Fail (under CI) or skip (elsewhere) when the named service does not answer."""
    host, port = SERVICES[name]
    if _reachable(host, port):
        return
    msg = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{msg}; CI=true requires it")
    pytest.skip(msg)


DB_ENGINES = ["sqlite", "postgresql", "mariadb"]


def db_url_for(engine: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    if engine == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'meta.db'}"
    require_service(engine)
    return POSTGRES_URL if engine == "postgresql" else MARIADB_URL


@pytest.fixture(params=DB_ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, empty metadata database on each engine (the shared ones are wiped first)."""
    url = db_url_for(request.param, tmp_path_factory)
    if request.param != "sqlite":
        from cubby.metadata.schema import drop_all

        drop_all(url)
    yield url


@pytest.fixture
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return db_url_for("sqlite", tmp_path_factory)
