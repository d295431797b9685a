"""Shared fixtures: real services on this machine, and the rule for when they are missing.

Under ``CI=true`` a test that needs PostgreSQL, MariaDB, Redis or NATS fails when it cannot reach
it; elsewhere it skips with the reason. No test talks to a mock of these services.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers.s3_servers import S3_SERVER_KINDS

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


@pytest.fixture(scope="session", autouse=True)
def _private_state_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The user state folder (`cubby.client.sync.known`: the folders `cubby sync` linked) in a
    temporary folder of the test run's, for this process and every command it starts: a test
    must neither write the home of whoever runs the suite nor read what it holds."""
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state-home"))


DB_ENGINES = ["sqlite", "postgresql", "mariadb"]


def worker_database(base_url: str, suffix: str = "") -> str:
    """A database of this pytest worker's own on a shared server, so parallel workers never
    see each other's tables (``suffix`` names a second one, for tests of two shards). Created
    on first use; the caller wipes its tables."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    url = make_url(base_url)
    # Several checkouts (worktrees) may run their suites at once on the same servers.
    checkout = hashlib.sha1(os.path.dirname(os.path.abspath(__file__)).encode()).hexdigest()[:6]
    name = f"cubby_{checkout}_{worker}{suffix}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if url.get_backend_name() == "postgresql":
                exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
                if not exists:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
            else:
                conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4"))
    finally:
        engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def db_url_for(engine: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A URL for a metadata database on ``engine``: a fresh SQLite file, or this worker's own
    database on the shared PostgreSQL / MariaDB server (not yet wiped)."""
    if engine == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'meta.db'}"
    require_service(engine)
    return worker_database(POSTGRES_URL if engine == "postgresql" else MARIADB_URL)


TWO_SHARDS = ["pg+pg", "pg+mariadb"]
"""Sharded deployments the metadata tests run on (docs/SHARDING.md): a PostgreSQL directory
that is also shard ``near``, and shard ``far`` on a second PostgreSQL database or on MariaDB."""


TWO_SHARD_PARAMS = TWO_SHARDS
"""`TWO_SHARDS` as parameters of a sharing test: the owner's root on one shard, members and new
folders on the other."""


def two_shard_urls(kind: str) -> tuple[str, dict[str, str]]:
    """(directory URL, ``{shard name: URL}``) of a fresh (migrated, empty) two-shard deployment of ``kind`` on
    this worker's own databases. New namespaces go to the shard holding fewest, ties by name,
    so the first user's root is on ``far`` (not the directory), the second's on ``near``."""
    from tests.helpers.fresh_db import fresh_database

    require_service("postgresql")
    near = worker_database(POSTGRES_URL)
    if kind == "pg+pg":
        far = worker_database(POSTGRES_URL, "_far")
    else:
        require_service("mariadb")
        far = worker_database(MARIADB_URL)
    for url in (near, far):
        fresh_database(url)
    return near, {"near": near, "far": far}


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


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[object]:
    """moto's S3 server in a child process, with a bucket of this session's."""
    from tests.helpers.s3_servers import s3_server

    with s3_server("moto") as server:
        yield server


@pytest.fixture(scope="session")
def ceph_s3() -> Iterator[object]:
    """A bucket on the Ceph RGW of ``ceph-up.sh`` (``CUBBY_TEST_CEPH=1``, its s3.env sourced)."""
    from tests.helpers.s3_servers import s3_server

    with s3_server("ceph") as server:
        yield server


@pytest.fixture(params=S3_SERVER_KINDS)
def s3_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> object:
    """Each S3 server of this run in turn (see `tests.helpers.s3_servers`), its credentials in
    the environment, where every AWS client looks for them."""
    from tests.helpers.s3_servers import use_s3_server

    return use_s3_server(request, request.param)


LONGEST_NODE_ID = 16 * 1024


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup``, refuse to run when pytest-xdist did not tag the grouped tests
    (it adds ``@group`` to their node ids, which pytest 9 no longer reads): a group's tests
    would then be spread over workers, and those that build on each other's state (the
    browser tests share one logged-in page) fail now and then instead of at once.

    And refuse a node id longer than `LONGEST_NODE_ID` (a parameter shown whole, such as a
    2 MB request body): pytest puts the running test's id in the environment
    (``PYTEST_CURRENT_TEST``), and Linux refuses to start a process whose environment holds a
    string of 128 KiB or more, so every process that test or a fixture set up for it started
    failed with "Argument list too long"; only when it happened to be the first of its
    module's tests on a worker, so now and then. Give such a parameter an ``id``."""
    for item in items:
        if len(item.nodeid) > LONGEST_NODE_ID:
            raise pytest.UsageError(f"a node id of {len(item.nodeid)} characters: give its parameter an id ({item.nodeid[:200]}...)")
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is not None and "@" not in item.nodeid.rsplit("]", 1)[-1]:
            raise pytest.UsageError(f"pytest-xdist did not group {item.nodeid} (--dist loadgroup): use pytest < 9 with pytest-xdist 3.8")
