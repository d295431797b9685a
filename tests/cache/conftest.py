from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from cubby.cache.base import MetadataCache, open_cache
from cubby.metadata.store import SqlMetadataStore, open_store
from tests.conftest import require_service
from tests.helpers.cache_servers import Memcached

CACHES = ["memory", "redis", "memcached"]


@pytest.fixture
def plain(sqlite_url: str) -> Iterator[SqlMetadataStore]:
    """The metadata store under a `CachedStore`, on a fresh SQLite file."""
    store = open_store(sqlite_url)
    yield store
    store.close()


@pytest.fixture
def memcached(tmp_path: Path) -> Iterator[Memcached]:
    server = Memcached(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def redis_url() -> str:
    """The machine's Redis, under a prefix of this test's own (other test runs share it)."""
    require_service("redis")
    return f"redis://127.0.0.1:6379/0?prefix=cubby-test-{secrets.token_hex(6)}"


@pytest.fixture
def cache_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    kind = getattr(request, "param", "memory")
    if kind == "memcached":
        server = Memcached(tmp_path).start()
        try:
            yield server.url
        finally:
            server.stop()
    else:
        yield redis_url() if kind == "redis" else "memory"


@pytest.fixture(params=CACHES)
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataCache]:
    """Each implementation of the `MetadataCache` Protocol, for one contract suite."""
    server = None
    if request.param == "memcached":
        server = Memcached(tmp_path).start()
        url = server.url
    else:
        url = redis_url() if request.param == "redis" else "memory"
    c = open_cache(url)
    assert c is not None
    try:
        yield c
    finally:
        c.close()
        if server is not None:
            server.stop()
