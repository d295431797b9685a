"""`cubby user disable`, `enable` and `token`, run as commands against the data of a running
server, which must refuse the user by the time `disable` returns, even where it keeps the
user's token in a cache: in its own memory (the embedded default) or in Redis or memcached.
The store's side on every engine is tests/metadata/test_disable.py."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_service
from tests.helpers.cache_servers import CACHE_SERVERS, start_cache_server
from tests.helpers.live_server import LiveServer

CUBBY = [sys.executable, "-m", "cubby"]
PASSWORD = "correct horse battery"


def cli(server: LiveServer, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CUBBY, "--json", "user", *args, "--data", str(server.data_dir)],
        input=stdin, capture_output=True, text=True, timeout=60,
    )


@pytest.fixture(params=["memory", *sorted(CACHE_SERVERS)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    if request.param == "memory":
        with LiveServer(tmp_path / "data") as s:
            yield s
        return
    cache = start_cache_server(request.param, tmp_path / "cache")
    try:
        with LiveServer(tmp_path / "data", extra_args=["--cache", cache.url]) as s:
            yield s
    finally:
        cache.stop()


def bearer(server: LiveServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_a_disabled_user_is_refused_everywhere_at_once_and_enabling_lets_them_back(server: LiveServer) -> None:
    token = server.add_user("ann")
    other = server.add_user("bob")
    assert cli(server, "passwd", "ann", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    with bearer(server, token) as ann, bearer(server, other) as bob, httpx.Client(base_url=server.url) as anon, \
            httpx.Client(base_url=server.url, timeout=30) as browser:
        assert ann.post("/api/v1/files/mkdir", json={"path": "/Public"}).status_code == 200
        link = ann.post("/api/v1/links", json={"path": "/Public"})
        assert link.status_code == 201, link.text
        link_path = "/l/" + link.json()["url"].rsplit("/l/", 1)[1]
        assert browser.post("/api/v1/session", json={"name": "ann", "password": PASSWORD}).status_code == 200
        for _ in range(3):  # the token's owner is now in the server's cache
            assert ann.get("/api/v1/account").status_code == 200
        assert browser.get("/api/v1/account").status_code == 200
        assert anon.get(link_path).status_code == 200

        done = cli(server, "disable", "ann")
        assert done.returncode == 0, done.stderr
        facts = json.loads(done.stdout)
        assert facts["disabled"] and facts["changed"] and facts["sessions_ended"] == 1

        r = ann.get("/api/v1/account")
        assert r.status_code == 403 and r.json()["code"] == "account_disabled", r.text
        assert "cubby user enable" in r.json()["message"]
        assert browser.get("/api/v1/account").status_code == 401  # the session ended
        r = anon.post("/api/v1/session", json={"name": "ann", "password": PASSWORD})
        assert r.status_code == 403 and r.json()["code"] == "account_disabled"
        r = anon.post("/api/v1/session", json={"name": "ann", "password": "not the password"})
        assert r.status_code == 401 and r.json()["code"] == "bad_login"  # a guess learns nothing
        assert anon.get(link_path).status_code == 404
        assert bob.get("/api/v1/account").status_code == 200
        refused = cli(server, "token", "ann")
        assert refused.returncode != 0 and "disabled" in refused.stderr + refused.stdout
        listed = {u["name"]: u for u in map(json.loads, cli(server, "ls").stdout.splitlines())}
        assert listed["ann"]["disabled_at"] is not None and listed["bob"]["disabled_at"] is None

        back = cli(server, "enable", "ann")
        assert back.returncode == 0 and json.loads(back.stdout)["changed"], back.stderr
        assert ann.get("/api/v1/account").status_code == 200
        assert anon.get(link_path).status_code == 200
        assert browser.get("/api/v1/account").status_code == 401  # they log in afresh
        assert anon.post("/api/v1/session", json={"name": "ann", "password": PASSWORD}).status_code == 200


def test_revoke_tokens_then_a_new_token_from_the_administrator(server: LiveServer) -> None:
    token = server.add_user("cat")
    with bearer(server, token) as cat:
        assert cat.get("/api/v1/account").status_code == 200
        done = cli(server, "disable", "cat", "--revoke-tokens")
        assert done.returncode == 0 and json.loads(done.stdout)["tokens_revoked"] == 1, done.stderr
        assert cli(server, "enable", "cat").returncode == 0
        r = cat.get("/api/v1/account")
        assert r.status_code == 401 and "revoked" in r.json()["message"]
    made = cli(server, "token", "cat")
    assert made.returncode == 0, made.stderr
    with bearer(server, json.loads(made.stdout)["token"]) as cat:
        assert cat.get("/api/v1/account").json()["name"] == "cat"


def test_disabling_nobody_is_a_clear_error(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data") as server:
        server.add_user("dan")
        r = cli(server, "disable", "nobody")
        assert r.returncode != 0 and "no user named 'nobody'" in r.stderr + r.stdout
    r = subprocess.run([*CUBBY, "user", "disable", "dan", "--data", str(tmp_path / "empty")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no cubby server data" in r.stderr


def test_a_bad_broker_url_changes_nothing_and_an_unreachable_broker_can_be_told_again(tmp_path: Path) -> None:
    """`user disable --broker`: a URL no server could use is refused before the user is
    disabled; a broker that cannot be reached leaves the user disabled and says so (exit 3,
    ``broker_unreachable``); running the command again, once a broker answers, tells it
    (a repeated disable changes nothing but publishes the account change again)."""
    import redis

    require_service("redis")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    with LiveServer(tmp_path / "data") as server:
        token = server.add_user("eve")
        bad = cli(server, "disable", "eve", "--broker", "bogus://x")
        assert bad.returncode == 2 and json.loads(bad.stderr)["error"]["code"] == "bad_broker_url"
        with bearer(server, token) as eve:
            assert eve.get("/api/v1/account").status_code == 200  # not disabled

            down = cli(server, "disable", "eve", "--broker", "redis://127.0.0.1:1/0")
            assert down.returncode == 3, down.stderr
            assert json.loads(down.stderr)["error"]["code"] == "broker_unreachable"
            said = json.loads(down.stdout)
            assert said["disabled"] and said["changed"] and not said["told_broker"]
            assert eve.get("/api/v1/account").status_code == 403

        listener = redis.Redis(host="127.0.0.1", port=6379).pubsub()
        listener.psubscribe(f"{prefix}.user.*")
        try:
            assert listener.get_message(timeout=5)["type"] == "psubscribe"  # type: ignore[index]
            again = cli(server, "disable", "eve", "--broker", f"redis://127.0.0.1:6379/0?prefix={prefix}")
            assert again.returncode == 0, again.stderr
            said = json.loads(again.stdout)
            assert not said["changed"] and said["told_broker"]
            heard = listener.get_message(timeout=5)
            assert heard is not None and heard["channel"] == f"{prefix}.user.{said['user_id']}".encode()
        finally:
            listener.close()
