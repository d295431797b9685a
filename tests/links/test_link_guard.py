"""Link passwords resist guessing, guessers do not starve other users, and no log line holds a
link token: through real HTTP against a server of this module's own (its throttles are per
process, so they must not be shared with other tests). The server trusts 127.0.0.1 as a proxy,
so that each request can say which client address it comes from (``X-Forwarded-For``)."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cubby.client.api import ApiClient
from cubby.client.upload import upload_file
from tests.helpers.live_server import LiveServer


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("link-guard") / "data"
    with LiveServer(data, extra_args=["--trusted-proxy", "127.0.0.1"]) as server:
        yield server


@pytest.fixture
def owner(guarded: LiveServer, tmp_path: Path) -> Iterator[tuple[ApiClient, str]]:
    token = guarded.add_user(f"owner{random.randrange(10**9)}")
    api = ApiClient(guarded.url, token)
    yield api, token
    api.close()


def _link(api: ApiClient, tmp: Path, password: str | None, body: bytes = b"the payload") -> str:
    src = tmp / f"f{random.randrange(10**9)}.txt"
    src.write_bytes(body)
    remote = f"/{src.name}"
    upload_file(api, src, remote)
    return str(api.create_link(remote, password=password)["url"]).rsplit("/l/", 1)[1]


def _from(address: str, password: str) -> dict[str, str]:
    return {"X-Forwarded-For": address, "X-Cubby-Link-Password": password}


def test_wrong_passwords_are_throttled_and_the_right_one_still_works_elsewhere(guarded, owner, tmp_path):
    api, _ = owner
    token = _link(api, tmp_path, "correct horse")
    statuses = []
    retry_after = 0
    with httpx.Client(base_url=guarded.url, timeout=60) as c:
        start = time.monotonic()
        for i in range(200):
            r = c.get(f"/l/{token}", headers=_from("203.0.113.7", f"guess {i}"))
            statuses.append(r.status_code)
            if r.status_code == 429:
                retry_after = int(r.headers["retry-after"])
                assert retry_after >= 1
                assert r.json()["code"] == "too_many_attempts"
                assert b"payload" not in r.content
        elapsed = time.monotonic() - start
        # The guesser is stopped after ten tries; later it earns one try per six seconds only
        # (the suite may run slowly on a busy machine, so those few are allowed for).
        assert statuses[:10] == [401] * 10 and statuses[10] == 429
        assert statuses.count(401) <= 10 + elapsed / 6 + 1
        # While stopped, even the right password is refused (else it would be an oracle).
        if retry_after >= 2:  # at least a second before the next try is earned
            assert c.get(f"/l/{token}", headers=_from("203.0.113.7", "correct horse")).status_code == 429
        # The link's rightful users, from other addresses, still get in.
        r = c.get(f"/l/{token}", headers=_from("198.51.100.20", "correct horse"))
        assert r.status_code == 200 and r.content == b"the payload"
        # A whole IPv6 /64 counts as one address: a host holding one cannot rotate through it.
        v6 = [c.get(f"/l/{token}", headers=_from(f"2001:db8:1:2::{i + 1:x}", f"v6 guess {i}")) for i in range(30)]
        assert [r.status_code for r in v6[:11]] == [401] * 10 + [429]
        if int(v6[-1].headers.get("retry-after", 0)) >= 2:
            assert c.get(f"/l/{token}", headers=_from("2001:db8:1:2::ffff", "correct horse")).status_code == 429
        assert c.get(f"/l/{token}", headers=_from("2001:db8:1:3::1", "correct horse")).status_code == 200


def test_other_requests_are_served_while_guessers_hammer(guarded, owner, tmp_path):
    api, owner_token = owner
    token = _link(api, tmp_path, "s3cret")
    public = _link(api, tmp_path, None, b"open to all")
    stop = threading.Event()
    guesses: Counter[int] = Counter()
    lock = threading.Lock()

    def guesser(n: int) -> None:
        with httpx.Client(base_url=guarded.url, timeout=120) as c:
            i = 0
            while not stop.is_set():
                # Every guess from another address: only the link's bucket and the pool hold them.
                r = c.get(f"/l/{token}", headers=_from(f"10.{n}.{i // 250}.{i % 250 + 1}", f"guess {n}-{i}"))
                with lock:
                    guesses[r.status_code] += 1
                i += 1

    threads = [threading.Thread(target=guesser, args=(n,), daemon=True) for n in range(64)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        answered = []
        with httpx.Client(base_url=guarded.url, timeout=120, headers={"Authorization": f"Bearer {owner_token}"}) as c:
            for _ in range(10):
                answered.append(c.get("/api/v1/account").status_code)
                answered.append(c.get(f"/l/{public}").status_code)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert answered == [200] * 20
    assert set(guesses) <= {401, 429} and guesses[429] > 0


def test_no_log_line_holds_a_link_token(guarded, owner, tmp_path):
    api, _ = owner
    token = _link(api, tmp_path, "pw")
    folder_token = _link(api, tmp_path, None)
    with httpx.Client(base_url=guarded.url, timeout=60) as c:
        for t in (token, folder_token):
            for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND"):
                for path in (f"/l/{t}", f"/l/{t}/", f"/l/{t}/sub/../x", f"/l/{t}?q=1", f"/l/{t}/a%2Fb"):
                    c.request(method, path, headers={"Range": "bytes=99999-"})
            for pw in ("pw", "wrong", "wrong again"):
                c.get(f"/l/{t}", headers=_from("192.0.2.1", pw))
            c.get(f"/api/v1/files/stat?path=/l/{t}")
            c.get(f"/l/{t[:-3]}")
    for t in (token, folder_token):  # requests uvicorn itself refuses, with the token in them
        with socket.create_connection(("127.0.0.1", guarded.port)) as s:
            s.sendall(f"GET /l/{t} HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n".encode())
            s.recv(4096)
        with socket.create_connection(("127.0.0.1", guarded.port)) as s:
            s.sendall(f"GET /l/{t} HTTP/1.1\r\nHost: x\r\n\x00bad header\r\n\r\n".encode())
            s.recv(4096)
    time.sleep(0.5)  # let the server flush its log lines
    logs = guarded.logs()
    assert "/l/<token>" in logs or "/l/<link " in logs  # requests were logged...
    for t in (token, folder_token):
        assert t not in logs and t[:-3] not in logs  # ...without their tokens
