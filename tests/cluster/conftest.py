"""One cluster per module: two processes of each role behind haproxy, on PostgreSQL, the
Redis broker and a metadata cache server of the run's own (a Redis or a memcached: see
`cache_kind`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import db_url_for, require_service
from tests.helpers.cache_servers import CACHE_SERVERS, CacheServer, start_cache_server
from tests.helpers.cluster import HAPROXY, Cluster


def cache_kind() -> str:
    """Which cache server the cluster runs: ``CUBBY_TEST_CACHE`` if set, else one chosen by
    the checked-out commit, so that successive commits alternate between Redis and memcached
    without running the long chaos test twice, and a failure reruns with the same one."""
    kinds = sorted(CACHE_SERVERS)
    chosen = os.environ.get("CUBBY_TEST_CACHE")
    if chosen:
        assert chosen in kinds, f"CUBBY_TEST_CACHE must be one of {kinds}"
        return chosen
    git = shutil.which("git")
    head = "" if git is None else subprocess.run(
        [git, "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=False
    ).stdout.strip()
    return kinds[int(head[:8], 16) % len(kinds)] if head else "memcached"


@pytest.fixture(scope="module")
def cluster_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CacheServer]:
    server = start_cache_server(cache_kind(), tmp_path_factory.mktemp("cache"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, cluster_cache: CacheServer) -> Iterator[Cluster]:
    require_service("redis")
    if not shutil.which(HAPROXY):
        pytest.fail("haproxy is missing: scripts/dev.py test installs it (apt-get install haproxy)")
    url = db_url_for("postgresql", tmp_path_factory)
    from cubby.metadata.schema import drop_all

    drop_all(url)
    with Cluster(tmp_path_factory.mktemp("cluster"), url, cache=cluster_cache.url) as c:
        yield c
