"""Password login, session cookies, CSRF and throttling, through real HTTP on loopback."""

from __future__ import annotations

import itertools
import json
import re

import httpx
import pytest
import websockets.sync.client as ws_client

from cubby.server.throttle import FailureThrottle, Policy
from tests.helpers.thread_server import ThreadServer

PASSWORD = "correct horse battery"
_names = itertools.count()


@pytest.fixture
def user(server: ThreadServer) -> tuple[str, str]:
    name = f"pat{next(_names)}"
    return name, server.add_user(name, PASSWORD)


def login(server: ThreadServer, name: str, password: str = PASSWORD, **headers: str) -> httpx.Client:
    c = httpx.Client(base_url=server.url, timeout=30)
    r = c.post("/api/v1/session", json={"name": name, "password": password}, headers=headers)
    assert r.status_code == 200, r.text
    c.headers["X-CSRF-Token"] = r.json()["csrf"]
    return c


def test_login_sets_a_protected_cookie_and_the_api_accepts_it(server: ThreadServer, user: tuple[str, str]) -> None:
    name, _ = user
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/api/v1/session", json={"name": name, "password": PASSWORD})
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower() and "Secure" not in cookie
        assert c.get("/api/v1/account").json()["name"] == name
        # The app shell carries the same CSRF token the login answered.
        page = c.get("/").text
        assert r.json()["csrf"] in page
        assert name in page


def test_secure_cookie_behind_a_trusted_https_proxy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with ThreadServer(tmp_path / "d", trusted_proxies=("127.0.0.1",)) as s:
        s.add_user("sam", PASSWORD)
        r = httpx.post(s.url + "/api/v1/session", json={"name": "sam", "password": PASSWORD},
                       headers={"X-Forwarded-Proto": "https"})
        assert "Secure" in r.headers["set-cookie"]


def test_wrong_password_refused_then_throttled_per_account(server: ThreadServer, user: tuple[str, str]) -> None:
    name, _ = user
    with httpx.Client(base_url=server.url) as c:
        for _ in range(4):
            r = c.post("/api/v1/session", json={"name": name, "password": "wrong password"})
            assert r.status_code == 401 and r.json()["code"] == "bad_login"
        r = c.post("/api/v1/session", json={"name": name, "password": "wrong password"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        # Even the right password waits now, and no cookie is set.
        r = c.post("/api/v1/session", json={"name": name, "password": PASSWORD})
        assert r.status_code == 429 and "set-cookie" not in r.headers
        assert "wait" in r.json()["message"]


def test_throttle_per_client_address_behind_a_trusted_proxy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Guesses spread over many accounts from one address are throttled by address; another
    client behind the same proxy is not."""
    with ThreadServer(tmp_path / "d", trusted_proxies=("127.0.0.1",)) as s:
        s.add_user("victim", PASSWORD)
        with httpx.Client(base_url=s.url) as c:
            codes = [
                c.post("/api/v1/session", json={"name": f"guess{i}", "password": "x" * 9},
                       headers={"X-Forwarded-For": "203.0.113.9"}).status_code
                for i in range(20)
            ]
            assert codes[:19] == [401] * 19 and codes[19] == 429
            r = c.post("/api/v1/session", json={"name": "victim", "password": PASSWORD},
                       headers={"X-Forwarded-For": "203.0.113.9"})
            assert r.status_code == 429
            r = c.post("/api/v1/session", json={"name": "victim", "password": PASSWORD},
                       headers={"X-Forwarded-For": "198.51.100.7"})
            assert r.status_code == 200


def test_csrf_header_and_origin_are_required_with_the_cookie(server: ThreadServer, user: tuple[str, str]) -> None:
    name, token = user
    c = login(server, name)
    csrf = c.headers.pop("X-CSRF-Token")
    r = c.post("/api/v1/files/mkdir", json={"path": "/forged"})
    assert r.status_code == 403 and r.json()["code"] == "csrf"
    r = c.post("/api/v1/files/mkdir", json={"path": "/forged"}, headers={"X-CSRF-Token": "0" * 64})
    assert r.status_code == 403
    r = c.post("/api/v1/files/mkdir", json={"path": "/forged"},
               headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
    assert r.status_code == 403
    r = c.get("/api/v1/files/list", params={"path": "/"})
    assert [e["name"] for e in r.json()["entries"]] == []  # nothing was made
    r = c.post("/api/v1/files/mkdir", json={"path": "/made"}, headers={"X-CSRF-Token": csrf, "Origin": server.url})
    assert r.status_code == 200
    # A cross-site login attempt is refused too (login CSRF).
    r = httpx.post(server.url + "/api/v1/session", json={"name": name, "password": PASSWORD},
                   headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    # Bearer tokens keep working, with no CSRF token.
    r = httpx.post(server.url + "/api/v1/files/mkdir", json={"path": "/by-token"},
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_logout_list_and_revoke_sessions(server: ThreadServer, user: tuple[str, str]) -> None:
    name, _ = user
    a, b = login(server, name, **{"User-Agent": "browser-a"}), login(server, name, **{"User-Agent": "browser-b"})
    sessions = a.get("/api/v1/sessions").json()["sessions"]
    assert {s["agent"] for s in sessions} == {"browser-a", "browser-b"}
    mine = next(s for s in sessions if s["current"])
    assert mine["agent"] == "browser-a"
    other = next(s for s in sessions if not s["current"])
    assert a.delete(f"/api/v1/sessions/{other['id']}").status_code == 204
    r = b.get("/api/v1/account")
    assert r.status_code == 401 and r.json()["code"] == "session_ended"
    assert a.delete("/api/v1/session").status_code == 204
    assert a.get("/api/v1/account").status_code == 401
    assert "login-form" in a.get("/").text


def test_passwd_ends_sessions(server: ThreadServer, user: tuple[str, str]) -> None:
    name, _ = user
    c = login(server, name)
    server.ctx.store.accounts.set_password(name, "another long password")
    assert c.get("/api/v1/account").status_code == 401
    r = httpx.post(server.url + "/api/v1/session", json={"name": name, "password": PASSWORD})
    assert r.status_code == 401
    login(server, name, "another long password")


def test_websocket_takes_the_cookie_only_from_our_origin(server: ThreadServer, user: tuple[str, str]) -> None:
    name, _ = user
    c = login(server, name)
    secret = c.cookies["cubby_session"]
    url = server.url.replace("http", "ws") + "/api/v1/notify/ws"
    root = c.get("/api/v1/account").json()["root_ns"]
    with ws_client.connect(url, additional_headers={"Cookie": f"cubby_session={secret}", "Origin": server.url}) as ws:
        ws.send(json.dumps({"cursor": {str(root): 0}}))
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
    with ws_client.connect(url, additional_headers={"Cookie": f"cubby_session={secret}",
                                                    "Origin": "http://evil.example"}) as ws:
        msg = json.loads(ws.recv(timeout=10))
        assert msg["type"] == "error" and msg["code"] == "csrf"


def test_security_headers_on_the_app(server: ThreadServer) -> None:
    r = httpx.get(server.url + "/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert not re.search(r"<script(?![^>]*\bsrc=)", r.text)  # no inline script
    js = httpx.get(server.url + "/static/app.js")
    assert js.status_code == 200 and not re.search(r"\.(innerHTML|outerHTML|insertAdjacentHTML)\b|document\.write", js.text)


def test_throttle_doubles_and_forgets_on_success() -> None:
    now = [0.0]
    t = FailureThrottle(Policy(free=3, first_delay=10), clock=lambda: now[0])
    t.failed("k")
    t.failed("k")
    assert t.retry_after("k") == 0
    t.failed("k")
    assert t.retry_after("k") == 10
    now[0] = 11
    t.failed("k")
    assert t.retry_after("k") == 20
    t.succeeded("k")
    assert t.retry_after("k") == 0
    small = FailureThrottle(Policy(free=1), max_keys=2, clock=lambda: now[0])
    for k in "abc":
        small.failed(k)
    assert small.retry_after("a") == 0 and small.retry_after("c") > 0
