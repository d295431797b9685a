"""Fixtures for the metadata store: a migrated store on each engine and a block store."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cubby.blockstore.base import BlockStore
from cubby.blockstore.folder import FolderObjectStore
from cubby.blockstore.memory import MemoryBlockStore
from cubby.blockstore.packs import PackBlockStore
from cubby.metadata.chunk_index import SqlChunkIndex
from cubby.metadata.store import SqlMetadataStore, open_store
from cubby.model import ChunkRef, CommitRequest
from tests.conftest import DB_ENGINES, TWO_SHARDS, db_url_for, two_shard_urls
from tests.helpers.fresh_db import fresh_database


@pytest.fixture
def store(db_url: str) -> Iterator[SqlMetadataStore]:
    s = open_store(db_url)
    yield s
    s.close()


def open_deployment(kind: str, tmp_path_factory: pytest.TempPathFactory) -> SqlMetadataStore:
    """A fresh store on one database (``sqlite``, ``postgresql``, ``mariadb``) or on two shards
    (`tests.conftest.TWO_SHARDS`)."""
    if kind in TWO_SHARDS:
        directory, shards = two_shard_urls(kind)
        return open_store(directory, shards=shards)
    url = db_url_for(kind, tmp_path_factory)
    if kind != "sqlite":
        fresh_database(url)
    return open_store(url)


@pytest.fixture(params=[*DB_ENGINES, *TWO_SHARDS])
def deployed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlMetadataStore]:
    """A fresh store on each engine alone and on each two-shard deployment: the contract
    suite runs on all of them."""
    s = open_deployment(request.param, tmp_path_factory)
    yield s
    s.close()


@pytest.fixture
def blocks() -> MemoryBlockStore:
    return MemoryBlockStore()


BlocksFor = Callable[[SqlMetadataStore], BlockStore]


@pytest.fixture(params=["memory", "packs"])
def blocks_for(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlocksFor]:
    """The block store each metadata store (standing for one process) uses: one shared memory
    store, or a pack store per process on one shared folder, indexed on that process's own
    connection to the database (as `cubby serve` opens it)."""
    if request.param == "memory":
        shared = MemoryBlockStore()
        yield lambda _store: shared
        return
    objects = FolderObjectStore(tmp_path / "packs")
    made: dict[int, PackBlockStore] = {}

    def make(store: SqlMetadataStore) -> BlockStore:
        return made.setdefault(id(store), PackBlockStore(objects, SqlChunkIndex(store.router.chunks)))

    yield make


def chunk(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data


def random_chunks(n: int, size: int = 1000) -> list[tuple[str, bytes]]:
    return [chunk(os.urandom(size)) for _ in range(n)]


def request(path: str, items: list[tuple[str, bytes]], expected_rev: int | None = None) -> CommitRequest:
    refs = tuple(ChunkRef(h, len(d)) for h, d in items)
    return CommitRequest(path=path, size=sum(r.size for r in refs), chunks=refs, expected_rev=expected_rev)


def put_file(
    store: SqlMetadataStore, blocks: MemoryBlockStore, user_id: int, ns: int, path: str,
    items: list[tuple[str, bytes]] | None = None, expected_rev: int | None = None,
):
    """Upload and commit a file the way a client does; returns the committed Entry."""
    items = items if items is not None else random_chunks(2)
    req = request(path, items, expected_rev)
    first = store.commit(user_id, ns, req)
    if first.committed:
        return first.entry
    store.ingest_chunks(ns, items, blocks)
    res = store.commit(user_id, ns, req)
    assert res.committed, res
    return res.entry
