"""A read request opens at most one database transaction, even without the metadata cache:
the caller's token, their memberships and the answer are read in one (`Database.reading`)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.helpers.live_server import LiveServer


def transactions(client: httpx.Client) -> float:
    return sum(
        float(line.split()[-1])
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("cubby_db_transactions_total")
    )


def test_an_uncached_stat_or_listing_is_one_transaction(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data", extra_args=["--cache", "none"]) as server:
        token = server.add_user("reader")
        with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=30) as c:
            assert c.post("/api/v1/files/mkdir", json={"path": "/d"}).status_code == 200
            for route, path in [("stat", "/d"), ("list", "/d"), ("list", "/"), ("stat", "/missing")]:
                before = transactions(c)
                r = c.get(f"/api/v1/files/{route}", params={"path": path})
                assert r.status_code == (404 if path == "/missing" else 200), r.text
                assert transactions(c) - before == 1, route
