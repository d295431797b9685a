"""A live server on loopback (SQLite by default) and clients for two users."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from cubby.client.api import ApiClient
from tests.helpers.live_server import LiveServer


@dataclass
class Users:
    server: LiveServer
    alice: ApiClient
    bob: ApiClient
    alice_token: str
    bob_token: str

    def raw(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("srv") / "data", extra_args=["--max-request-bytes", str(32 * 1024 * 1024)]) as s:
        yield s


@pytest.fixture
def users(live: LiveServer, request: pytest.FixtureRequest) -> Iterator[Users]:
    suffix = str(abs(hash(request.node.nodeid)) % 10**8)
    ta, tb = live.add_user(f"alice{suffix}"), live.add_user(f"bob{suffix}")
    a, b = ApiClient(live.url, ta), ApiClient(live.url, tb)
    yield Users(live, a, b, ta, tb)
    a.close()
    b.close()
