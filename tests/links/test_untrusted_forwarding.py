"""Without ``--trusted-proxy``, no header moves a request to another client address, not even
from 127.0.0.1: a guesser on this machine (or behind a local proxy nobody declared) who writes a
new ``X-Forwarded-For`` on every try is still one address to the link-password throttle.

uvicorn on its own trusts ``X-Forwarded-For`` and ``X-Forwarded-Proto`` from 127.0.0.1; cubby
turns that off, so that `cubby.server.peers.TrustedProxies` alone decides whom to believe."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cubby.client.api import ApiClient
from cubby.client.upload import upload_file
from tests.helpers.live_server import LiveServer


@pytest.fixture(scope="module")
def untrusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("untrusting") / "data") as server:
        yield server


def test_a_rotating_forwarded_for_from_loopback_is_still_one_guesser(untrusting: LiveServer, tmp_path: Path):
    api = ApiClient(untrusting.url, untrusting.add_user(f"owner{random.randrange(10**9)}"))
    try:
        src = tmp_path / "secret.txt"
        src.write_bytes(b"the payload")
        upload_file(api, src, "/secret.txt")
        token = str(api.create_link("/secret.txt", password="correct horse")["url"]).rsplit("/l/", 1)[1]
    finally:
        api.close()
    with httpx.Client(base_url=untrusting.url, timeout=60) as c:
        statuses = [
            c.get(
                f"/l/{token}",
                headers={"X-Forwarded-For": f"203.0.113.{i + 1}", "X-Cubby-Link-Password": f"guess {i}"},
            ).status_code
            for i in range(11)
        ]
        assert statuses == [401] * 10 + [429]
        # Still stopped, whatever address the next try claims.
        r = c.get(f"/l/{token}", headers={"X-Forwarded-For": "198.51.100.9", "X-Cubby-Link-Password": "x"})
        assert r.status_code == 429
