"""Two metadata processes on one database and one cache server, as behind a load balancer:
wrong passwords for one account spread over both are locked out after ``ACCOUNT_FREE`` in
total, not per process, and then even the right password is refused on both until the lock
ends. Real HTTP on loopback, real server processes, a real Redis or memcached of the test's
own (`tests.helpers.cache_servers`). Each process counting on its own would let the fifth
wrong password through as a 401."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cubby.server.sessions import ACCOUNT_FREE
from tests.helpers.cache_servers import start_cache_server
from tests.helpers.live_server import LiveServer

PASSWORD = "correct horse battery"


@pytest.fixture(params=["redis", "memcached"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    cache = start_cache_server(request.param, tmp_path / "cache")
    db = f"sqlite:///{tmp_path / 'meta.db'}"
    shared = ["--cache", cache.url]
    first = LiveServer(tmp_path / "one", db_url=db, role="meta", extra_args=shared)
    second = LiveServer(tmp_path / "two", db_url=db, role="meta", extra_args=shared)
    try:
        first.start()  # migrates the empty database before the second one opens it
        second.start()
        yield first, second
    finally:
        second.stop()
        first.stop()
        cache.stop()


def add_user_with_password(server: LiveServer, name: str) -> None:
    from cubby.metadata.store import open_store

    store = open_store(server.metadata_url)
    try:
        store.create_user(name)
        store.accounts.set_password(name, PASSWORD)
    finally:
        store.close()


def login(server: LiveServer, name: str, password: str) -> httpx.Response:
    return httpx.post(server.url + "/api/v1/session", json={"name": name, "password": password}, timeout=30)


def test_wrong_passwords_over_two_processes_share_one_lock(pair: tuple[LiveServer, LiveServer]) -> None:
    one, two = pair
    assert httpx.get(one.url + "/healthz").json()["pid"] != httpx.get(two.url + "/healthz").json()["pid"]
    add_user_with_password(one, "pat")
    servers = [one, two]
    answers = [login(servers[i % 2], "pat", f"wrong {i}") for i in range(ACCOUNT_FREE)]
    # Alternating, neither process has seen ACCOUNT_FREE failures itself: only the shared count has.
    assert [r.status_code for r in answers] == [401] * (ACCOUNT_FREE - 1) + [429]
    for server in servers:
        r = login(server, "pat", PASSWORD)  # even the right password, on either process
        assert r.status_code == 429 and "set-cookie" not in r.headers, r.text
        assert r.json()["code"] == "too_many_attempts"
    wait = int(r.headers["Retry-After"])
    assert 0 < wait <= 10
    time.sleep(wait)  # the lock's end (the first delay, 10 s): no clock to move in another process
    r = login(two, "pat", PASSWORD)
    assert r.status_code == 200 and "set-cookie" in r.headers, r.text
    # The success cleared the account for both: one wrong password elsewhere is no lock.
    assert login(one, "pat", "wrong again").status_code == 401
    assert login(one, "pat", PASSWORD).status_code == 200
