"""Object stores for the contract tests: every implementation of `ObjectStore` is one entry of
`OBJECT_STORES`, a factory given the test's request (to reach service fixtures) and a temp
folder. Adding a backend is one line there; every test that takes ``objects`` runs on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cubby.blockstore.folder import FolderObjectStore
from cubby.blockstore.objects import ObjectStore


def _folder(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return FolderObjectStore(tmp_path / "objects")


OBJECT_STORES: dict[str, Callable[[pytest.FixtureRequest, Path], ObjectStore]] = {
    "folder": _folder,
}


@pytest.fixture(params=sorted(OBJECT_STORES))
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    store = OBJECT_STORES[request.param](request, tmp_path)
    try:
        yield store
    finally:
        store.close()
