"""Password login, session cookies, CSRF and throttling, through real HTTP on loopback."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

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


def test_a_burst_of_wrong_passwords_gets_the_free_attempts_not_one_per_guess(
    tmp_path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """Each login counts as a failure before its password is hashed, so guesses sent at once
    cannot all pass the gate before the first of them counts: of 12 concurrent wrong
    passwords, the account's 5 free ones are hashed, the rest refused unhashed, and the lock
    is the first one (10 s), not one doubled for every guess that was in flight (counted after
    hashing, all 12 were tried, and the lock had doubled seven times)."""
    with ThreadServer(tmp_path / "d") as server:  # its own: the module's server counts failures by address
        name = "burst"
        server.add_user(name, PASSWORD)
        accounts = server.ctx.store.accounts
        hashed: list[str] = []
        verify = accounts.verify

        def counted(n: str, password: str):  # type: ignore[no-untyped-def]
            hashed.append(password)
            return verify(n, password)

        monkeypatch.setattr(accounts, "verify", counted)
        with ThreadPoolExecutor(12) as pool:
            codes = sorted(pool.map(
                lambda i: httpx.post(server.url + "/api/v1/session", json={"name": name, "password": f"wrong {i}"},
                                     timeout=60).status_code,
                range(12),
            ))
        assert len(hashed) == 5
        # The 7 refused ones are 429; a hashed one too once the account is locked when it is answered.
        assert set(codes) <= {401, 429} and codes.count(429) >= 7
        r = httpx.post(server.url + "/api/v1/session", json={"name": name, "password": PASSWORD})
        assert r.status_code == 429 and 0 < int(r.headers["Retry-After"]) <= 10
        assert len(hashed) == 5


def test_a_flood_of_logins_past_the_queue_is_refused_at_once_unhashed(
    tmp_path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """While every place of the hashing queue is taken, a login is answered 503 with
    ``Retry-After`` at once, before the throttle is asked (a flood costs a shared throttle
    nothing), and nothing of it is hashed; those queued are checked as usual once
    the pool frees up. (Each login comes from its own address behind a trusted proxy, for its
    own account, so that no throttle stops any of them first.)"""
    from cubby.server.sessions import HASH_QUEUE

    with ThreadServer(tmp_path / "d", trusted_proxies=("127.0.0.1",)) as server:
        accounts = server.ctx.store.accounts
        release = threading.Event()
        hashed: list[str] = []
        verify = accounts.verify

        def held(n: str, password: str):  # type: ignore[no-untyped-def]
            hashed.append(n)
            release.wait(60)
            return verify(n, password)

        monkeypatch.setattr(accounts, "verify", held)
        asked: list[str] = []
        admit = FailureThrottle.admit

        def counted_admit(self: FailureThrottle, key: str) -> int:
            asked.append(key)
            return admit(self, key)

        monkeypatch.setattr(FailureThrottle, "admit", counted_admit)
        extra = 6

        def login_as(i: int) -> httpx.Response:
            return httpx.post(server.url + "/api/v1/session", json={"name": f"flood{i}", "password": "x" * 9},
                              headers={"X-Forwarded-For": f"198.51.100.{i}"}, timeout=60)

        with ThreadPoolExecutor(HASH_QUEUE + extra) as pool:
            futures = [pool.submit(login_as, i) for i in range(HASH_QUEUE + extra)]
            refused = []
            deadline = time.monotonic() + 30
            while len(refused) < extra and time.monotonic() < deadline:
                refused = [f.result() for f in futures if f.done()]
                time.sleep(0.05)
            assert [r.status_code for r in refused] == [503] * extra
            assert all(r.headers["Retry-After"] == "1" for r in refused)
            release.set()
            codes = [f.result().status_code for f in futures]
        assert sorted(codes) == [401] * HASH_QUEUE + [503] * extra
        assert len(hashed) == HASH_QUEUE
        assert len(asked) == 2 * HASH_QUEUE  # account and address of the queued ones; none of the refused


def test_the_right_password_takes_back_its_failure_in_advance(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A right password after four wrong ones logs in and forgets the account's failures: the
    next four wrong ones are answered 401 again, not 429."""
    name = "pat"
    with ThreadServer(tmp_path / "d") as server, httpx.Client(base_url=server.url) as c:
        server.add_user(name, PASSWORD)
        for _ in range(4):
            assert c.post("/api/v1/session", json={"name": name, "password": "wrong password"}).status_code == 401
        assert c.post("/api/v1/session", json={"name": name, "password": PASSWORD}).status_code == 200
        for _ in range(4):
            assert c.post("/api/v1/session", json={"name": name, "password": "wrong password"}).status_code == 401


def test_a_disabled_account_is_refused_without_counting_its_right_password(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The right password of a disabled account is answered 403 (account_disabled) however
    often it is given: it is not a failed guess, so it never locks the account."""
    with ThreadServer(tmp_path / "d") as server:
        server.add_user("gone", PASSWORD)
        server.ctx.store.set_disabled("gone", True)
        for _ in range(7):
            r = httpx.post(server.url + "/api/v1/session", json={"name": "gone", "password": PASSWORD})
            assert r.status_code == 403 and r.json()["code"] == "account_disabled", r.text
        server.ctx.store.set_disabled("gone", False)
        assert httpx.post(server.url + "/api/v1/session", json={"name": "gone", "password": PASSWORD}).status_code == 200


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
