"""Push notifications for shared folders, through the all-in-one server on loopback: an edit
by one member wakes another member's long-poll on the folder's namespace; removing a member
wakes their long-poll with ``account_changed`` and their next subscription to the folder
answers 404."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.notify.conftest import subscriber_count, wait_subscribed
from tests.shares.conftest import file_bytes, put_many


def longpoll(url: str, token: str, cursor: dict[int, int]) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/notify/longpoll",
        json={"cursor": {str(k): v for k, v in cursor.items()}, "timeout": 30},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def subscribers(url: str, token: str) -> int:
    return subscriber_count(url, token)


def cursor_of(api) -> dict[int, int]:
    return {int(n["ns_id"]): int(n["head"]) for n in api.account()["namespaces"]}


def test_member_edits_and_removal_reach_long_polls(server, people):
    alice, bob = people["alice"], people["bob"]
    put_many(alice.api, {"/Team/plan.txt": file_bytes(1, "push")})
    shared = alice.api.share("/Team", bob.name, "editor")
    bob.api.accept_share(shared["ns_id"])
    ns = shared["ns_id"]
    with ThreadPoolExecutor(2) as pool:
        before = subscribers(server.url, alice.token)
        alice_cursor = cursor_of(alice.api)
        waiting = pool.submit(longpoll, server.url, alice.token, alice_cursor)
        wait_subscribed(server.url, before + 1, alice.token)
        (mount,) = [n["path"] for n in bob.api.account()["namespaces"] if n["ns_id"] == ns]
        put_many(bob.api, {f"{mount}/from-bob.txt": file_bytes(2, "push")}, ns_id=ns)
        answer = waiting.result().json()
        assert answer["changed"] is True
        assert answer["heads"][str(ns)] == cursor_of(alice.api)[ns] > alice_cursor[ns]

        bob_cursor = cursor_of(bob.api)
        assert ns in bob_cursor
        before = subscribers(server.url, alice.token)
        waiting = pool.submit(longpoll, server.url, bob.token, bob_cursor)
        wait_subscribed(server.url, before + 1, alice.token)
        alice.api.remove_member("/Team", bob.name)
        answer = waiting.result().json()
        assert answer["account_changed"] is True, answer

    again = longpoll(server.url, bob.token, bob_cursor)
    assert again.status_code == 404 and again.json()["code"] == "not_found"
    assert ns not in cursor_of(bob.api)
