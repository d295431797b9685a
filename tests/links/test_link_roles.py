"""Roles split over processes: the meta role manages links, the blocks role serves them, and
neither answers the other's routes."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest

from cubby.client.api import ApiClient
from cubby.client.upload import upload_file
from tests.helpers.live_server import LiveServer

pytestmark = pytest.mark.xdist_group("links")


def test_meta_manages_links_and_blocks_serves_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LiveServer(data) as both:  # uploads need both roles; then split them
        token = both.add_user("carol")
        payload = random.Random(9).randbytes(300_000)
        (tmp_path / "f.bin").write_bytes(payload)
        with ApiClient(both.url, token) as api:
            upload_file(api, tmp_path / "f.bin", "/f.bin")
    with LiveServer(data, role="meta") as meta, LiveServer(data, role="blocks") as blocks:
        with ApiClient(meta.url, token) as api:
            link = api.create_link("/f.bin")
        path = "/l/" + link["url"].rsplit("/l/", 1)[1]
        misdirected = httpx.get(meta.url + path)  # no public route on meta: it names the role that has one
        assert misdirected.status_code == 421 and misdirected.json()["details"]["role"] == "blocks"
        r = httpx.get(blocks.url + path)
        assert r.status_code == 200 and r.content == payload
        head = httpx.head(blocks.url + path)
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(payload))
        r = httpx.post(blocks.url + "/api/v1/links", json={"path": "/f.bin"}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 421 and r.json()["details"]["role"] == "meta"  # no management route on blocks
        with ApiClient(meta.url, token) as api:
            assert [item["id"] for item in api.list_links()] == [link["id"]]
            api.revoke_link(link["id"])
        assert httpx.get(blocks.url + path).status_code == 404
