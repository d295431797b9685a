"""`cubby serve --workers N`, through HTTP: every worker answers on the one port, a worker
killed with SIGKILL comes back, any worker's /metrics counts the requests of all, and on the
embedded default no worker answers from a stale cache or misses another's commit."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers.live_server import LiveServer

pytestmark = pytest.mark.slow


def answering_pids(url: str, want: int, *, tries: int = 400) -> tuple[set[int], int]:
    """The pids of the workers that answer /healthz on fresh connections (until `want` are
    seen), and how many requests that took."""
    seen: set[int] = set()
    for n in range(1, tries + 1):
        with httpx.Client() as client:  # a new connection: the kernel picks the worker again
            seen.add(int(client.get(url + "/healthz").json()["pid"]))
        if len(seen) >= want:
            return seen, n
    return seen, tries


def healthz_count(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    pattern = r'^cubby_http_requests_total\{[^}]*route="/healthz"[^}]*\} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_share_the_port_come_back_and_count_together(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", extra_args=["--workers", "2"])
    server.start()
    try:
        pids, _ = answering_pids(server.url, 2)
        assert len(pids) == 2 and server.proc is not None and server.proc.pid not in pids

        before = healthz_count(server.url)
        pids2, made = answering_pids(server.url, 2)
        assert pids2 == pids
        # Whichever worker answers /metrics counts what both served.
        assert healthz_count(server.url) - before == made

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now, _ = answering_pids(server.url, 2, tries=50)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.2)
        assert len(now) == 2 and victim not in now and max(pids) in now
        assert not alive(victim)
    finally:
        parent = server.proc
        server.stop()
    # SIGTERM to the parent stops every worker.
    assert parent is not None and parent.returncode == 0
    for pid in pids | now:
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid)


def pinned_clients(url: str, token: str, want: int, *, tries: int = 400) -> dict[int, httpx.Client]:
    """One open connection to each of ``want`` workers, keyed by the worker's pid: a client
    asks /healthz on a new connection and is kept if that worker has none yet (a connection
    stays with the worker that accepted it)."""
    pinned: dict[int, httpx.Client] = {}
    for _ in range(tries):
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
        pid = int(client.get("/healthz").json()["pid"])
        if pid in pinned:
            client.close()
        else:
            pinned[pid] = client
        if len(pinned) >= want:
            return pinned
    for c in pinned.values():
        c.close()
    raise AssertionError(f"only {len(pinned)} of {want} workers answered in {tries} connections")


def test_workers_on_the_embedded_default_never_answer_from_a_stale_cache(tmp_path: Path) -> None:
    """Each worker once kept its own in-process cache: after a folder was made through one,
    every listing another answered lacked it, and a revoked token still worked there."""
    with LiveServer(tmp_path / "data", extra_args=["--workers", "2"]) as server:
        token = server.add_user("alice")
        clients = pinned_clients(server.url, token, 2)
        try:
            spare = clients[min(clients)].post("/api/v1/tokens", json={"label": "spare"}).json()
            for c in clients.values():  # both workers have read the root and the spare token
                assert c.get("/api/v1/files/list", params={"path": "/"}).json()["entries"] == []
                assert c.get("/api/v1/account", headers={"Authorization": f"Bearer {spare['token']}"}).status_code == 200
            maker = clients[min(clients)]
            assert maker.post("/api/v1/files/mkdir", json={"path": "/made"}).status_code == 200
            assert maker.delete(f"/api/v1/tokens/{spare['id']}").status_code in (200, 204)
            for c in clients.values():
                names = [e["name"] for e in c.get("/api/v1/files/list", params={"path": "/"}).json()["entries"]]
                assert names == ["made"]
                refused = c.get("/api/v1/account", headers={"Authorization": f"Bearer {spare['token']}"})
                assert refused.status_code == 401
        finally:
            for c in clients.values():
                c.close()
        assert "metadata cache off" in server.logs()


def test_a_commit_through_one_worker_wakes_long_polls_held_by_every_worker(tmp_path: Path) -> None:
    """The embedded default's in-process broker woke only the worker that took the commit; a
    long-poll held by another answered "nothing changed" when its timeout ran out."""
    with LiveServer(tmp_path / "data", extra_args=["--workers", "2"]) as server:
        token = server.add_user("alice")
        clients = pinned_clients(server.url, token, 2)
        try:
            account = next(iter(clients.values())).get("/api/v1/account").json()
            ns = account["root_ns"]
            head = next(n["head"] for n in account["namespaces"] if n["ns_id"] == ns)
            with ThreadPoolExecutor(len(clients)) as pool:
                polls = [
                    pool.submit(c.post, "/api/v1/notify/longpoll", json={"cursor": {str(ns): head}, "timeout": 30})
                    for c in clients.values()
                ]
                with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as other:
                    assert other.post("/api/v1/files/mkdir", json={"path": "/news"}).status_code == 200
                answers = [p.result().json() for p in polls]
        finally:
            for c in clients.values():
                c.close()
        for answer in answers:
            assert answer["changed"] is True and int(answer["heads"][str(ns)]) > head


def test_a_worker_restarted_after_a_tmp_cleaner_took_the_metrics_folder_serves(tmp_path: Path) -> None:
    """The parent's metrics folder lives in the temporary folder, which a cleaner may empty
    while the server runs; a worker restarted after that once failed to start, and /metrics
    answered 500. The parent makes the folder again before it starts a worker."""
    import shutil

    with LiveServer(tmp_path / "data", extra_args=["--workers", "2"]) as server:
        pids, _ = answering_pids(server.url, 2)
        environ = Path(f"/proc/{min(pids)}/environ").read_bytes().split(b"\0")
        folder = next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")).split(b"=", 1)[1].decode()
        shutil.rmtree(folder)
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        now: set[int] = set()
        while time.monotonic() < deadline:
            now, _ = answering_pids(server.url, 2, tries=50)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.2)
        assert len(now) == 2 and victim not in now
        assert httpx.get(server.url + "/metrics").status_code == 200
        assert Path(folder).is_dir()
