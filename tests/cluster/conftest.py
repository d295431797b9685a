"""One cluster per module: two processes of each role behind haproxy, on PostgreSQL and Redis."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import db_url_for, require_service
from tests.helpers.cluster import HAPROXY, Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_service("redis")
    if not shutil.which(HAPROXY):
        pytest.fail("haproxy is missing: scripts/dev.py test installs it (apt-get install haproxy)")
    url = db_url_for("postgresql", tmp_path_factory)
    from cubby.metadata.schema import drop_all

    drop_all(url)
    with Cluster(tmp_path_factory.mktemp("cluster"), url) as c:
        yield c
