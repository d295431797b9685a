"""Strong consistency across processes: two servers on one PostgreSQL database and one cache
server of the test's own (a Redis, and a memcached). A writer commits, revokes tokens, removes
a member and invites her back, again and again, through process A while readers hammer
process B; every read is checked
against what A had acknowledged before the read was sent, and none may show an older state.
The cache server is killed (SIGKILL) and restarted mid-run: meanwhile requests fall through
to the database, and acknowledged writes whose invalidation found nobody listening must not
reappear older when it is back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import db_url_for
from tests.helpers.cache_servers import CACHE_SERVERS, CacheServer, start_cache_server
from tests.helpers.fresh_db import fresh_database
from tests.helpers.live_server import LiveServer

ROUNDS = 60


@pytest.fixture(params=sorted(CACHE_SERVERS))
def pair(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, LiveServer, CacheServer]]:
    url = db_url_for("postgresql", tmp_path_factory)
    fresh_database(url)
    cache = start_cache_server(request.param, tmp_path / "cache")
    args = ["--cache", cache.url, "--auto-accept-shares"]
    a = LiveServer(tmp_path / "a", db_url=url, extra_args=args).start()
    b = LiveServer(tmp_path / "b", db_url=url, extra_args=args).start()
    try:
        yield a, b, cache
    finally:
        a.stop()
        b.stop()
        cache.stop()


class Acks:
    """What process A acknowledged, with the time each answer arrived."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.head = (0.0, 0)  # (ack time, rev of the newest commit)
        self.files: list[tuple[float, str]] = []
        self.revoked: list[tuple[float, str]] = []
        self.removed_at: float | None = None
        self.remove_sent_at: float | None = None

    def newest_before(self, t0: float) -> tuple[int, str | None, str | None, bool]:
        with self.lock:
            head = self.head[1] if self.head[0] < t0 else 0
            files = [f for at, f in self.files if at < t0]
            revoked = [tok for at, tok in self.revoked if at < t0]
            removed = self.removed_at is not None and self.removed_at < t0
        return head, (files[-1] if files else None), (revoked[-1] if revoked else None), removed


class Register:
    """A value that the writer changes back and forth (carol's membership), with the time
    each change was sent and acknowledged: a read answered between ``t0`` and ``t1`` must
    show the newest value acknowledged before ``t0``, unless a change was under way then."""

    def __init__(self, value: bool) -> None:
        self.lock = threading.Lock()
        self.changes: list[tuple[float, float, bool]] = [(0.0, 0.0, value)]
        self.sent_at: float | None = None

    def send(self) -> None:
        with self.lock:
            self.sent_at = time.monotonic()

    def acked(self, value: bool) -> None:
        with self.lock:
            assert self.sent_at is not None
            self.changes.append((self.sent_at, time.monotonic(), value))
            self.sent_at = None

    def expected(self, t0: float, t1: float) -> bool | None:
        with self.lock:
            if self.sent_at is not None and self.sent_at < t1:
                return None  # a change is under way: either value is right
            if any(sent < t1 and acked > t0 for sent, acked, _ in self.changes):
                return None
            return [v for _, acked, v in self.changes if acked < t0][-1]


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_no_read_on_one_process_is_older_than_an_ack_on_the_other(pair: tuple[LiveServer, LiveServer, CacheServer]) -> None:
    a, b, cache = pair
    alice, bob, carol = a.add_user("alice"), a.add_user("bob"), a.add_user("carol")
    wa, rb = httpx.Client(base_url=a.url, timeout=30), httpx.Client(base_url=b.url, timeout=30)
    assert wa.post("/api/v1/files/mkdir", json={"path": "/team"}, headers=auth(alice)).status_code == 200
    for member in ("bob", "carol"):
        r = wa.post("/api/v1/shares", json={"path": "/team", "user": member}, headers=auth(alice))
        assert r.status_code == 201, r.text
    carol_member = Register(True)
    acks = Acks()
    stop = threading.Event()
    violations: list[str] = []
    reads = {"n": 0}

    def write() -> None:
        for i in range(ROUNDS):
            r = wa.post("/api/v1/files/commit", json={"path": f"/team/f{i}", "size": 0, "chunks": []}, headers=auth(alice))
            assert r.status_code == 200, r.text
            now = time.monotonic()
            with acks.lock:
                acks.head = (now, int(r.json()["entry"]["rev"]))
                acks.files.append((now, f"f{i}"))
            if i % 4 == 0:  # a token of bob's, used on B (so B caches it), then revoked on A
                made = wa.post("/api/v1/tokens", json={"label": f"t{i}"}, headers=auth(bob)).json()
                assert rb.get("/api/v1/account", headers=auth(made["token"])).status_code == 200
                assert rb.get("/api/v1/account", headers=auth(made["token"])).status_code == 200
                assert wa.delete(f"/api/v1/tokens/{made['id']}", headers=auth(bob)).status_code == 204
                with acks.lock:
                    acks.revoked.append((time.monotonic(), made["token"]))
            if i % 6 == 3:  # carol is removed, or invited back (and mounts the folder again)
                member = carol_member.expected(time.monotonic(), time.monotonic())
                carol_member.send()
                if member:
                    r = wa.post("/api/v1/shares/remove", json={"path": "/team", "user": "carol"}, headers=auth(alice))
                else:
                    r = wa.post("/api/v1/shares", json={"path": "/team", "user": "carol"}, headers=auth(alice))
                assert r.status_code in (200, 201), r.text
                carol_member.acked(not member)
            if i == ROUNDS // 3:
                cache.stop()  # the cache server dies (SIGKILL) ...
            if i == ROUNDS // 2:
                cache.start()  # ... and comes back empty
        with acks.lock:
            acks.remove_sent_at = time.monotonic()
        r = wa.post("/api/v1/shares/remove", json={"path": "/team", "user": "bob"}, headers=auth(alice))
        assert r.status_code == 200, r.text
        with acks.lock:
            acks.removed_at = time.monotonic()
        time.sleep(0.5)  # readers keep reading after the removal
        stop.set()

    def read_alice() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            head, newest, _, _ = acks.newest_before(t0)
            r = rb.get("/api/v1/files/stat", params={"path": "/team"}, headers=auth(alice))
            reads["n"] += 1
            if r.status_code != 200 or int(r.json()["entry"]["rev"]) < head:
                violations.append(f"alice stat /team: {r.status_code} {r.text[:200]} < acked head {head}")
            if newest is not None:
                page = rb.get("/api/v1/files/list", params={"path": "/team"}, headers=auth(alice))
                names = {e["name"] for e in page.json().get("entries", [])}
                if newest not in names:
                    violations.append(f"alice list /team lacks acknowledged {newest}")

    def read_bob() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            _, newest, revoked, removed = acks.newest_before(t0)
            if revoked is not None:
                r = rb.get("/api/v1/account", headers=auth(revoked))
                if r.status_code != 401:
                    violations.append(f"revoked token answered {r.status_code}")
            if newest is None:
                continue
            r = rb.get("/api/v1/files/stat", params={"path": f"/team/{newest}"}, headers=auth(bob))
            reads["n"] += 1
            with acks.lock:
                racing = acks.remove_sent_at is not None and acks.remove_sent_at < time.monotonic()
            if removed and r.status_code != 404:
                violations.append(f"bob read /team/{newest} after his removal: {r.status_code}")
            elif not removed and not racing and r.status_code != 200:
                violations.append(f"bob stat /team/{newest} acknowledged: {r.status_code} {r.text[:200]}")

    def read_carol() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            r = rb.get("/api/v1/files/stat", params={"path": "/team"}, headers=auth(carol))
            reads["n"] += 1
            member = carol_member.expected(t0, time.monotonic())
            if member is not None and r.status_code != (200 if member else 404):
                violations.append(f"carol (member: {member}) stat /team: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=fn) for fn in (read_alice, read_bob, read_carol)]
    for t in threads:
        t.start()
    try:
        write()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not violations, violations[:10]
    assert reads["n"] > ROUNDS
    metrics = rb.get("/metrics").text
    hits = [ln for ln in metrics.splitlines() if ln.startswith("cubby_cache_requests_total") and 'result="hit"' in ln]
    assert hits and float(hits[0].split()[-1]) > 0, "process B never read from the cache"
    assert b.proc is not None and b.proc.poll() is None
