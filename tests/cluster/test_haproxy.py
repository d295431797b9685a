"""The shipped haproxy configuration in front of two processes of each role: one URL works for
a sync client, a dead process is routed around, and a long-poll client that vanishes is
dropped by the notify process behind the proxy."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from cubby.client.api import ApiClient
from cubby.client.sync.engine import SyncEngine
from tests.helpers.cluster import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]


def subscribers(cluster: Cluster, token: str) -> int:
    """Long-polls and WebSockets waiting on every notify process (asked directly, not
    through the proxy, so that each process is counted once)."""
    total = 0
    for server in cluster.servers["notify"]:
        resp = httpx.get(server.url + "/api/v1/notify", headers={"Authorization": f"Bearer {token}"})
        resp.raise_for_status()
        total += int(resp.json()["subscribers"])
    return total


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_one_url_serves_every_role_and_routes_around_a_dead_process(cluster: Cluster, tmp_path: Path) -> None:
    token = cluster.add_user("routed")
    discovered = httpx.get(cluster.url + "/api/v1/discovery").json()
    assert {discovered[r] for r in ("meta", "blocks", "notify")} == {cluster.url}
    a = SyncEngine(tmp_path / "a", ApiClient(cluster.url, token), host="a")
    b = SyncEngine(tmp_path / "b", ApiClient(cluster.url, token), host="b")
    try:
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "a" / "big.bin").write_bytes(bytes(range(256)) * 20_000)
        assert a.run_once().converged
        # One blocks and one meta process die: haproxy sends everything to the others.
        cluster.servers["blocks"][0].stop(kill=True)
        cluster.servers["meta"][1].stop(kill=True)
        try:
            assert b.run_once().converged
            assert (tmp_path / "b" / "big.bin").read_bytes() == bytes(range(256)) * 20_000
        finally:
            cluster.servers["blocks"][0].start()
            cluster.servers["meta"][1].start()
    finally:
        for e in (a, b):
            e.close()
            e.api.close()


def test_a_vanished_long_poll_client_is_dropped_behind_the_proxy(cluster: Cluster) -> None:
    token = cluster.add_user("vanishing")
    with ApiClient(cluster.url, token) as api:
        cursor = {str(ns["ns_id"]): int(ns["head"]) for ns in api.account()["namespaces"]}
    before = subscribers(cluster, token)
    body = json.dumps({"cursor": cursor, "timeout": 300}).encode()
    sock = socket.create_connection(("127.0.0.1", cluster.port))
    sock.sendall(
        b"POST /api/v1/notify/longpoll HTTP/1.1\r\nHost: cubby\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    wait_for(lambda: subscribers(cluster, token) == before + 1, "the long-poll to arrive")
    sock.close()  # the client vanishes without a word
    wait_for(lambda: subscribers(cluster, token) == before, "the notify process to drop it")
