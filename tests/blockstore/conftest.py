"""Object stores for the contract tests: every implementation of `ObjectStore` is one entry of
`OBJECT_STORES`, a factory given the test's request (to reach service fixtures) and a temp
folder. Adding a backend is one line there; every test that takes ``objects`` runs on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cubby.blockstore.folder import FolderObjectStore
from cubby.blockstore.objects import ObjectStore
from tests.helpers.s3_servers import S3_SERVER_KINDS


def _folder(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return FolderObjectStore(tmp_path / "objects")


def _s3_on(kind: str) -> Callable[[pytest.FixtureRequest, Path], ObjectStore]:
    """On an S3 server process of the session's (`tests.helpers.s3_servers`), opened by its
    ``s3://`` URL, under a prefix of this test's own."""

    def make(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
        from tests.helpers.s3_servers import s3_object_store_for_test

        return s3_object_store_for_test(request, kind)  # type: ignore[return-value]

    return make


OBJECT_STORES: dict[str, Callable[[pytest.FixtureRequest, Path], ObjectStore]] = {
    "folder": _folder,
    **{f"s3-{kind}": _s3_on(kind) for kind in S3_SERVER_KINDS},
}


@pytest.fixture(params=sorted(OBJECT_STORES))
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    store = OBJECT_STORES[request.param](request, tmp_path)
    try:
        yield store
    finally:
        store.close()
