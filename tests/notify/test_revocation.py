"""Revocation is immediate on every front: a revoked token or a removed member loses its open
long-polls and WebSockets at once (the token revocation travels through the broker to the
notification process), one token holds a bounded number of waiting connections, and the
subscriber counts are shown to authenticated callers only.

Fronts: the all-in-one server (uvicorn, in-process broker), and a metadata process with a
separate notification process joined by Redis, the latter lean or ASGI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from tests.helpers.live_server import LiveServer
from tests.notify.conftest import (
    Account,
    Deployment,
    account,
    longpoll,
    meta_and_notify,
    start_longpoll,
    subscriber_count,
    wait_subscribed,
    ws_connect,
    ws_recv,
)

MAX_WAITS = 3
WAIT = 30.0
"""A generous bound: the long-polls below would otherwise wait 480 s."""


@pytest.fixture(scope="module", params=["main", "lean", "asgi"])
def dep(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp: Path = tmp_path_factory.mktemp(f"revoke-{request.param}")
    limits = ["--max-waits-per-token", str(MAX_WAITS)]
    if request.param == "main":
        with LiveServer(tmp / "all", db_url=f"sqlite:///{tmp / 'meta.db'}", role="all", extra_args=limits) as server:
            yield Deployment(server, server.url)
        return
    front = ["--notify-front", request.param]
    with meta_and_notify(tmp, meta_role="meta", notify_args=limits + front, front=request.param) as deployment:
        yield deployment


def subscribe(ws: object, cursor: dict[str, int]) -> None:
    ws.send(json.dumps({"cursor": cursor}))  # type: ignore[attr-defined]
    assert ws_recv(ws)["type"] == "subscribed"  # type: ignore[arg-type]


def assert_closed(ws: object, code: int) -> None:
    with pytest.raises(ConnectionClosed):
        while True:
            ws.recv(timeout=WAIT)  # type: ignore[attr-defined]
    assert ws.close_code == code  # type: ignore[attr-defined]


def test_a_revoked_token_loses_its_long_poll_and_websocket(dep: Deployment) -> None:
    alice = account(dep)
    second = alice.api.create_token("listener")
    before = subscriber_count(dep.url, alice.token)
    with ThreadPoolExecutor(1) as pool, ws_connect(dep.url, second["token"]) as ws:
        waiting = start_longpoll(pool, dep.url, second["token"], alice.cursor())
        subscribe(ws, alice.cursor())
        wait_subscribed(dep.url, before + 2, alice.token)

        alice.api.revoke_token(second["id"])

        answer = waiting.result(timeout=WAIT)
        assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"
        assert ws_recv(ws)["code"] == "unauthorized"
        assert_closed(ws, 4401)
    assert subscriber_count(dep.url, alice.token) == before
    # Nor can it come back.
    assert longpoll(dep.url, second["token"], {"cursor": alice.cursor(), "timeout": 30}).status_code == 401
    with ws_connect(dep.url, second["token"]) as ws:
        assert ws_recv(ws)["code"] == "unauthorized"
        assert_closed(ws, 4401)
    # The token that revoked it goes on working.
    alice.api.mkdir("/still-here")


def recv_skipping_changes(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not a journal-head notice."""
    message = ws_recv(ws)
    while message.get("type") == "changed":
        message = ws_recv(ws)
    return message


def test_a_removed_member_loses_the_shared_folder_on_open_connections(dep: Deployment) -> None:
    alice, bob = account(dep, f"a{uuid.uuid4().hex[:8]}"), account(dep, f"b{uuid.uuid4().hex[:8]}")
    bob_name = bob.api.account()["name"]
    alice.api.mkdir("/Team")
    ns = int(alice.api.share("/Team", bob_name, "editor")["ns_id"])
    bob.api.accept_share(ns)
    cursor = {str(n["ns_id"]): int(n["head"]) for n in bob.api.account()["namespaces"]}
    assert str(ns) in cursor
    before = subscriber_count(dep.url, alice.token)
    with ThreadPoolExecutor(1) as pool, ws_connect(dep.url, bob.token) as ws:
        waiting = start_longpoll(pool, dep.url, bob.token, {str(ns): cursor[str(ns)]})
        subscribe(ws, cursor)
        wait_subscribed(dep.url, before + 2, alice.token)

        alice.api.remove_member("/Team", bob_name)

        answer = waiting.result(timeout=WAIT).json()
        assert answer["account_changed"] is True and ns not in answer["namespaces"]
        # The unmount moves bob's root namespace too, and account changes are published
        # before journal heads, so a "changed" for the root may come before or after.
        assert recv_skipping_changes(ws) == {"type": "account_changed", "revoked": [ns]}
        ws.send(json.dumps({"cursor": {str(ns): cursor[str(ns)]}}))
        assert recv_skipping_changes(ws)["code"] == "not_found"
    again = longpoll(dep.url, bob.token, {"cursor": {str(ns): cursor[str(ns)]}, "timeout": 30})
    assert again.status_code == 404


def test_a_user_disabled_from_the_command_line_loses_their_websocket(dep: Deployment) -> None:
    """`cubby user disable --broker URL` publishes the user's account change where the servers
    hear it, as a server does when it revokes a token: the user's open WebSocket is closed at
    once (4401, ``account_disabled``). The all-in-one server's broker lives in its memory, out
    of the command's reach, which says so (``told_broker``): there the socket is refused when
    it next asks for anything."""
    alice, bob = account(dep, f"a{uuid.uuid4().hex[:8]}"), account(dep, f"b{uuid.uuid4().hex[:8]}")
    bob_name = bob.api.account()["name"]
    cursor = bob.cursor()
    with ws_connect(dep.url, bob.token) as ws:
        subscribe(ws, cursor)
        args = ["user", "disable", bob_name, "--db", dep.meta.metadata_url]
        done = subprocess.run(
            [sys.executable, "-m", "cubby", "--json", *args, *(["--broker", dep.broker] if dep.broker else [])],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["told_broker"] is (dep.broker is not None)
        if dep.broker is None:
            ws.send(json.dumps({"cursor": cursor}))
        message = recv_skipping_changes(ws)
        assert message["code"] == "account_disabled", message
        assert_closed(ws, 4401)
    alice.api.mkdir("/still-here")  # everybody else goes on


def test_one_token_holds_a_bounded_number_of_waiting_connections(dep: Deployment) -> None:
    alice = account(dep)
    before = subscriber_count(dep.url, alice.token)
    with ThreadPoolExecutor(MAX_WAITS) as pool:
        waits = [start_longpoll(pool, dep.url, alice.token, alice.cursor()) for _ in range(MAX_WAITS)]
        wait_subscribed(dep.url, before + MAX_WAITS, alice.token)
        refused = longpoll(dep.url, alice.token, {"cursor": alice.cursor(), "timeout": 30})
        assert refused.status_code == 429 and refused.json()["code"] == "too_many_requests"
        with ws_connect(dep.url, alice.token) as ws:
            assert ws_recv(ws)["code"] == "too_many_requests"
            assert_closed(ws, 4429)
        # Another token of the same user is not held to this one's count.
        other = alice.api.create_token("other")["token"]
        with ws_connect(dep.url, other) as ws:
            subscribe(ws, alice.cursor())
        alice.api.mkdir("/wake")  # ends the waiting long-polls
        assert all(w.result(timeout=WAIT).json()["changed"] for w in waits)


def test_subscriber_counts_only_for_an_authenticated_caller(dep: Deployment) -> None:
    alice: Account = account(dep)
    public = httpx.get(dep.url + "/api/v1/notify", timeout=30)
    assert public.status_code == 200 and "longpoll" in public.json()["transports"]
    assert not {"subscribers", "namespaces", "resyncs"} & set(public.json())
    bad = httpx.get(dep.url + "/api/v1/notify", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert bad.status_code == 401
    assert subscriber_count(dep.url, alice.token) >= 0
