"""`cubby serve --workers N`, through HTTP: every worker answers on the one port, a worker
killed with SIGKILL comes back, and any worker's /metrics counts the requests of all."""

from __future__ import annotations

import os
import re
import signal
import time
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
