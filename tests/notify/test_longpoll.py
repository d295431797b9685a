"""Long-poll and WebSocket through real HTTP on loopback, on both front ends of the
notification role: the Starlette routes of an all-in-one server (in-process broker) and the
lean server of a separate notification process (joined to its metadata process by Redis)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cubby.client.api import ApiClient
from cubby.client.changes import PollWaiter, open_waiter
from cubby.client.notify import PushWaiter
from tests.helpers.live_server import LiveServer
from tests.notify.conftest import (
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


@pytest.fixture(scope="module", params=["asgi", "lean"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("notify")
    if request.param == "asgi":
        with LiveServer(tmp / "data") as s:
            yield Deployment(s, s.url, "asgi")
        return
    with meta_and_notify(tmp, meta_role="meta,blocks", notify_args=[]) as dep:
        yield dep


def subscribers(live: Deployment, token: str) -> int:
    return subscriber_count(live.url, token)


def test_a_commit_wakes_a_long_poll_and_an_unrelated_commit_does_not(live: Deployment, pool: ThreadPoolExecutor) -> None:
    alice, bob = account(live), account(live)
    alice_cursor, bob_cursor = alice.cursor(), bob.cursor()
    before = subscribers(live, alice.token)
    alice_wait = start_longpoll(pool, live.url, alice.token, alice_cursor)
    bob_wait = start_longpoll(pool, live.url, bob.token, bob_cursor)
    wait_subscribed(live.url, before + 2, alice.token)

    bob.api.mkdir("/b")  # bob's namespace moves: bob wakes, alice must not
    answer = bob_wait.result().json()
    assert answer["changed"] is True and answer["heads"][str(bob.ns_id)] == bob.head()
    assert not alice_wait.done()

    alice.api.mkdir("/a")
    answer = alice_wait.result().json()
    # Had bob's commit woken her, the answer would carry her old head.
    assert answer == {
        "changed": True, "heads": {str(alice.ns_id): alice.head()}, "account_changed": False,
        "namespaces": [alice.ns_id], "backoff": 0.0,
    }
    assert answer["heads"][str(alice.ns_id)] > alice_cursor[str(alice.ns_id)]


def test_a_change_before_the_subscription_is_reported_at_once(live: Deployment) -> None:
    alice = account(live)
    stale = alice.cursor()
    alice.api.mkdir("/landed-before-subscribing")
    answer = longpoll(live.url, alice.token, {"cursor": stale, "timeout": 480}).json()
    assert answer["changed"] is True and answer["heads"][str(alice.ns_id)] == alice.head()


def test_a_commit_wakes_a_websocket_and_it_keeps_listening(live: Deployment) -> None:
    alice, bob = account(live), account(live)
    with ws_connect(live.url, alice.token) as ws:
        ws.send('{"cursor": %s}' % str(alice.cursor()).replace("'", '"'))
        assert ws_recv(ws) == {"type": "subscribed", "heads": alice.cursor(), "changed": False}
        bob.api.mkdir("/b")  # not hers
        alice.api.mkdir("/one")
        assert ws_recv(ws) == {"type": "changed", "heads": {str(alice.ns_id): alice.head()}}
        alice.api.mkdir("/two")
        assert ws_recv(ws) == {"type": "changed", "heads": {str(alice.ns_id): alice.head()}}
        # A stale cursor sent again is answered with the news at once.
        ws.send('{"cursor": {"%d": 0}}' % alice.ns_id)
        assert ws_recv(ws) == {"type": "subscribed", "heads": alice.cursor(), "changed": True}


def test_push_waiter_wakes_on_a_commit_and_close_releases_it(live: Deployment, tmp_path: Path) -> None:
    alice = account(live)
    listener = ApiClient(live.meta.url, alice.token)
    waiter = live.waiter(listener)
    if live.front == "asgi":  # the all-in-one server offers push at its one address
        assert isinstance(open_waiter(listener), PushWaiter)
    cursor = {alice.ns_id: alice.head()}
    before = subscribers(live, alice.token)
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(waiter.wait(cursor, 600)))
    t.start()
    wait_subscribed(live.url, before + 1, alice.token)
    alice.api.mkdir("/x")
    t.join()
    assert result == [True] and waiter.pushing
    # A cursor missing a namespace the account has is news too (the account changed).
    assert waiter.wait({}, 600) is True
    t = threading.Thread(target=lambda: result.append(waiter.wait({alice.ns_id: alice.head()}, 600)))
    t.start()
    wait_subscribed(live.url, before + 1, alice.token)
    waiter.close()
    t.join()
    assert result[-1] is True
    listener.close()


def test_open_waiter_polls_when_the_server_has_no_notification_role(tmp_path: Path) -> None:
    """(Independent of the front end.)"""
    with LiveServer(tmp_path / "data", role="meta") as meta:
        alice = account(meta)
        waiter = open_waiter(alice.api)
        assert isinstance(waiter, PollWaiter)
        waiter.close()


# -- authentication and bad input ------------------------------------------------------------
@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"cursor": "NS", "timeout": 30}, 400, "bad_cursor"),
        ({"cursor": {}, "timeout": 30}, 400, "bad_cursor"),
        ({"cursor": {"x": 1}, "timeout": 30}, 400, "bad_cursor"),
        ({"cursor": {"NS": -1}, "timeout": 30}, 400, "bad_cursor"),
        ({"cursor": {"NS": "3"}, "timeout": 30}, 400, "bad_cursor"),
        ({"cursor": {"NS": 10**6}, "timeout": 30}, 400, "bad_cursor"),
        ({"cursor": {"NS": 0}, "timeout": 29}, 400, "bad_timeout"),
        ({"cursor": {"NS": 0}, "timeout": 481}, 400, "bad_timeout"),
        ({"cursor": {"NS": 0}, "timeout": "60"}, 400, "bad_timeout"),
        ({"cursor": {"NS": 0}}, 400, "bad_timeout"),
        ({"cursor": {"OTHER": 0}, "timeout": 30}, 404, "not_found"),
        ({"cursor": {"999999": 0}, "timeout": 30}, 404, "not_found"),
        ("not json", 400, "malformed_json"),
    ],
)
def test_bad_long_poll_input_gets_a_clear_error(live: Deployment, body: object, status: int, code: str) -> None:
    alice, bob = account(live), account(live)
    if isinstance(body, dict):
        text = str(body).replace("'", '"').replace("NS", str(alice.ns_id)).replace("OTHER", str(bob.ns_id))
    else:
        text = str(body)
    before = subscribers(live, alice.token)
    resp = longpoll(live.url, alice.token, text)
    assert resp.status_code == status, resp.text
    assert resp.json()["code"] == code and resp.json()["message"]
    assert subscribers(live, alice.token) == before  # nothing left registered


@pytest.mark.parametrize("token", [None, "cby_not-a-token"])
def test_long_poll_needs_a_valid_token(live: Deployment, token: str | None) -> None:
    alice = account(live)
    resp = longpoll(live.url, token, {"cursor": alice.cursor(), "timeout": 30})
    assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"


def test_websocket_refuses_a_bad_token_and_bad_cursors(live: Deployment) -> None:
    alice, bob = account(live), account(live)
    with ws_connect(live.url, "cby_wrong") as ws:
        assert ws_recv(ws)["code"] == "unauthorized"
    assert ws.close_code == 4401
    with ws_connect(live.url, alice.token) as ws:
        ws.send("nope")
        assert ws_recv(ws)["code"] == "malformed_json"
        ws.send('{"cursor": {"%d": 0}}' % bob.ns_id)
        assert ws_recv(ws) == {"type": "error", "code": "not_found", "message": f"namespace {bob.ns_id} does not exist", "details": {"ns_id": bob.ns_id}}
        ws.send('{"cursor": {"%d": 99999}}' % alice.ns_id)
        assert ws_recv(ws)["code"] == "bad_cursor"
        # Still usable after the errors.
        ws.send('{"cursor": {"%d": 0}}' % alice.ns_id)
        assert ws_recv(ws)["type"] == "subscribed"
