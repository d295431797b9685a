"""One URL is enough: a client pointed at any process of a deployment finds every role.

A request for a route that the process does not serve answers 421 ``wrong_role`` naming the
role (never a 404 that looks like a missing file); the client then asks ``/api/v1/discovery``
and sends the request, and later ones of that role, to the advertised address.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from cubby.client.api import ApiClient
from cubby.client.download import download_file
from cubby.client.notify import PushWaiter
from cubby.client.upload import upload_file
from cubby.errors import WrongRole
from tests.conftest import require_service
from tests.helpers.live_server import LiveServer


def test_the_all_in_one_server_names_itself_for_every_role(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data") as s:
        body = httpx.get(s.url + "/api/v1/discovery").json()
        assert {body[r] for r in ("meta", "blocks", "notify")} == {s.url}
        assert body["serves"] == ["blocks", "meta", "notify"]


def test_a_route_of_another_role_names_that_role(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'meta.db'}"
    with LiveServer(tmp_path / "data", db_url=db, role="meta") as meta:
        token = meta.add_user("ana")
        r = httpx.post(meta.url + "/api/v1/blocks/prove", json={"ns_id": 1, "proofs": {}},
                       headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 421
        body = r.json()
        assert body["code"] == "wrong_role" and body["details"]["role"] == "blocks"
        assert "blocks role" in body["message"] and body["details"]["url"] is None
        assert httpx.get(meta.url + "/l/abc").json()["details"]["role"] == "blocks"
        # a route that exists nowhere is still a plain 404
        assert httpx.get(meta.url + "/api/v1/files/nothing-here").status_code in (404, 405)
        with ApiClient(meta.url, token) as api, pytest.raises(WrongRole):
            api.prove(1, {"0" * 64: (1, "0" * 64)})  # nobody advertises blocks: the error says so


def test_a_client_that_knows_only_the_meta_url_uploads_and_downloads(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'meta.db'}"
    data = tmp_path / "data"
    blocks = LiveServer(data, db_url=db, role="blocks")
    meta = LiveServer(data, db_url=db, role="meta", extra_args=["--advertise-blocks", blocks.url])
    with blocks, meta:
        token = meta.add_user("ben")
        payload = os.urandom(3 * 1024 * 1024 + 17)
        (tmp_path / "up.bin").write_bytes(payload)
        with ApiClient(meta.url, token) as api:
            upload_file(api, tmp_path / "up.bin", "/up.bin")
            assert api.role_urls["blocks"] == blocks.url  # learned from the first 421
            download_file(api, "/up.bin", tmp_path / "down.bin")
            assert b"".join(api.download("/up.bin", offset=5)) == payload[5:]
        assert (tmp_path / "down.bin").read_bytes() == payload


def test_push_finds_the_notify_role_through_discovery(tmp_path: Path) -> None:
    require_service("redis")
    db = f"sqlite:///{tmp_path / 'meta.db'}"
    broker = ["--broker", f"redis://127.0.0.1:6379/0?prefix=t{uuid.uuid4().hex[:12]}"]
    notify = LiveServer(tmp_path / "notify", db_url=db, role="notify", extra_args=broker)
    meta = LiveServer(tmp_path / "meta", db_url=db, role="meta,blocks",
                      extra_args=[*broker, "--advertise-notify", notify.url])
    with meta, notify:
        token = meta.add_user("cleo")
        with ApiClient(meta.url, token) as api:
            account = api.account()
            cursor = {int(n["ns_id"]): int(n["head"]) for n in account["namespaces"]}
            waiter = PushWaiter(api)
            try:
                assert api.role_urls["notify"] == notify.url
                timer = threading.Timer(1.0, lambda: api.mkdir("/hello"))
                timer.start()
                assert waiter.wait(cursor, 60) is True
                timer.join()
                assert waiter.pushing, "the change came by push from the notify role, not by polling"
            finally:
                waiter.close()


def test_the_lean_notify_front_answers_discovery_and_names_other_roles(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'meta.db'}"
    with LiveServer(tmp_path / "notify", db_url=db, role="notify",
                    extra_args=["--advertise-meta", "http://meta.example:8765"]) as notify:
        body = httpx.get(notify.url + "/api/v1/discovery").json()
        assert body["notify"] == notify.url and body["meta"] == "http://meta.example:8765"
        assert body["blocks"] is None and body["serves"] == ["notify"]
        r = httpx.post(notify.url + "/api/v1/files/commit", json={})
        assert r.status_code == 421 and r.json()["code"] == "wrong_role"
        assert r.json()["details"] == {"role": "meta", "url": "http://meta.example:8765"}
        assert httpx.get(notify.url + "/nothing").status_code == 404
