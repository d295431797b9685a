"""A live server on loopback per metadata engine (SQLite and PostgreSQL), and helpers to
upload many small files quickly through the public API."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cubby.client.api import ApiClient, commit_body
from cubby.metadata.store import SqlMetadataStore, open_store
from cubby.model import ChunkRef
from tests.conftest import TWO_SHARDS, db_url_for, two_shard_urls
from tests.helpers.fresh_db import fresh_database
from tests.helpers.live_server import LiveServer

ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(scope="module", params=ENGINES)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live server on one database (``sqlite``, ``postgresql``) or, when a test asks for it
    (``indirect`` parametrization with a `tests.conftest.TWO_SHARDS` kind), on two shards:
    directory and shard ``near`` on PostgreSQL, ``far`` on a second PostgreSQL database or
    MariaDB, new shared folders on ``far`` (`people` puts alice on ``near``, bob on ``far``)."""
    if request.param in TWO_SHARDS:
        directory, shards = two_shard_urls(request.param)
        with LiveServer(
            tmp_path_factory.mktemp("srv") / "data", db_url=directory, shards=shards, place_new="far"
        ) as s:
            yield s
        return
    url = db_url_for(request.param, tmp_path_factory)
    if request.param != "sqlite":
        fresh_database(url)
    with LiveServer(tmp_path_factory.mktemp("srv") / "data", db_url=url if request.param != "sqlite" else None) as s:
        yield s


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlMetadataStore]:
    url = db_url_for(request.param, tmp_path_factory)
    if request.param != "sqlite":
        fresh_database(url)
    s = open_store(url)
    yield s
    s.close()


@dataclass
class Person:
    name: str
    token: str
    api: ApiClient


@pytest.fixture
def people(server: LiveServer, request: pytest.FixtureRequest) -> Iterator[dict[str, Person]]:
    """alice, bob, carol and dave, with names unique to the test."""
    suffix = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    out = {}
    for who in ("alice", "bob", "carol", "dave"):
        name = f"{who}{suffix}"
        token = server.add_user(name, "near" if server.shards and who == "alice" else None)
        out[who] = Person(name, token, ApiClient(server.url, token))
    yield out
    for p in out.values():
        p.api.close()


def file_bytes(i: int, tag: str = "") -> bytes:
    return f"file {i} {tag} ".encode() * 40


def put_many(api: ApiClient, files: dict[str, bytes], ns_id: int | None = None) -> dict[str, int]:
    """Commit small one-chunk files in batches, uploading the chunks the server asks for.
    Returns path -> committed revision."""
    ns = ns_id or api.account()["root_ns"]
    revs: dict[str, int] = {}
    items = list(files.items())
    for i in range(0, len(items), 500):
        part = items[i : i + 500]
        bodies = [
            commit_body(p, len(d), [ChunkRef(hashlib.sha256(d).hexdigest(), len(d))], None, None) for p, d in part
        ]
        results = api.commit_batch(bodies)
        missing = {hashlib.sha256(d).hexdigest(): d for (p, d), r in zip(part, results) if not getattr(r, "committed", True)}
        if missing:
            api.upload_chunks(ns, list(missing.items()))
            results = api.commit_batch(bodies)
        for (p, _), r in zip(part, results):
            assert getattr(r, "committed", False), (p, r)
            revs[p] = r.entry.rev
    return revs


def blocks_on_disk(server: LiveServer) -> tuple[int, int]:
    """(number of chunk files, their total bytes) in the server's block store folder."""
    files = [f for f in Path(server.data_dir, "blocks").rglob("*") if f.is_file()]
    return len(files), sum(f.stat().st_size for f in files)


@dataclass
class TwoShards:
    """A wiped two-shard deployment (`tests.conftest.two_shard_urls`: the directory and shard
    ``near`` on one PostgreSQL database, ``far`` on another or on MariaDB)."""

    directory: str
    shards: dict[str, str]
    opened: list[SqlMetadataStore]

    def open(self, place_new: str) -> SqlMetadataStore:
        """A store on the deployment whose new namespaces (users' roots, shared folders) go
        to shard ``place_new``: owners, members and shared folders are put on different
        shards this way."""
        s = open_store(self.directory, shards=self.shards, place_new=place_new, migrate_schema=not self.opened)
        self.opened.append(s)
        return s


@pytest.fixture(params=TWO_SHARDS)
def two_shards(request: pytest.FixtureRequest) -> Iterator[TwoShards]:
    directory, shards = two_shard_urls(request.param)
    t = TwoShards(directory, shards, [])
    yield t
    for s in t.opened:
        s.close()
