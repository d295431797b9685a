from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cubby.cache.base import MetadataCache, open_cache
from cubby.metadata.store import SqlMetadataStore, open_store
from tests.helpers.cache_servers import Memcached, start_cache_server

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


@contextmanager
def cache_server_url(kind: str, folder: Path) -> Iterator[str]:
    """The URL of a cache of ``kind``: ``memory``, or a Redis or memcached server of the
    test's own (a Redis run as the cache must be run, without persistence: cubby refuses
    one that persists, and the machine's shared Redis may)."""
    if kind == "memory":
        yield "memory"
        return
    server = start_cache_server(kind, folder)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def cache_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with cache_server_url(getattr(request, "param", "memory"), tmp_path / "cache") as url:
        yield url


@pytest.fixture(params=CACHES)
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataCache]:
    """Each implementation of the `MetadataCache` Protocol, for one contract suite."""
    with cache_server_url(request.param, tmp_path / "cache") as url:
        c = open_cache(url)
        assert c is not None
        try:
            yield c
        finally:
            c.close()
