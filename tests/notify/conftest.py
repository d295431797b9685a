"""Live servers for notification tests, and small clients for the long-poll and WebSocket."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from cubby.client.api import ApiClient
from cubby.client.notify import PushWaiter
from tests.conftest import require_service
from tests.helpers.live_server import LiveServer


@dataclass
class Deployment:
    """Where users are added and commits go (``meta``), and where the notification routes
    answer (``url``): the same server, or a notify process of its own."""

    meta: LiveServer
    url: str
    front: str = "asgi"
    broker: str | None = None
    """The broker URL the processes share (None: the all-in-one server's own, in its memory)."""

    def add_user(self, name: str) -> str:
        return self.meta.add_user(name)

    def waiter(self, api: ApiClient) -> PushWaiter:
        return PushWaiter(api, url=self.url)


@contextmanager
def meta_and_notify(
    tmp: Path, *, meta_role: str, notify_args: list[str], front: str = "lean"
) -> Iterator[Deployment]:
    """A meta process and a notify process on one SQLite database, joined by the machine's
    Redis under a prefix of their own."""
    require_service("redis")
    db = f"sqlite:///{tmp / 'meta.db'}"
    broker = ["--broker", f"redis://127.0.0.1:6379/0?prefix=t{uuid.uuid4().hex[:12]}"]
    with (
        LiveServer(tmp / "meta", db_url=db, role=meta_role, extra_args=broker) as meta,
        LiveServer(tmp / "notify", db_url=db, role="notify", extra_args=broker + notify_args) as notify,
    ):
        yield Deployment(meta, notify.url, front, broker[1])


@dataclass
class Account:
    """One user: a client that commits, and the token a second client listens with."""

    api: ApiClient
    token: str
    ns_id: int

    def head(self) -> int:
        acct = self.api.account()
        return int(next(ns["head"] for ns in acct["namespaces"] if ns["ns_id"] == self.ns_id))

    def cursor(self) -> dict[str, int]:
        return {str(self.ns_id): self.head()}


def account(server: Any, name: str | None = None) -> Account:
    """A new user on ``server`` (a `LiveServer`, or anything with ``add_user`` and ``meta``)."""
    token = server.add_user(name or f"u{uuid.uuid4().hex[:10]}")
    api = ApiClient(getattr(server, "meta", server).url, token)
    return Account(api, token, int(api.account()["root_ns"]))


def longpoll(url: str, token: str | None, body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
        if isinstance(body, (bytes, str)):
            return http.post("/api/v1/notify/longpoll", content=body, headers={"Content-Type": "application/json"})
        return http.post("/api/v1/notify/longpoll", json=body)


def ws_connect(url: str, token: str | None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return connect(url.replace("http://", "ws://") + "/api/v1/notify/ws", additional_headers=headers)


def ws_recv(conn: ClientConnection) -> dict[str, Any]:
    return dict(json.loads(conn.recv(timeout=120)))


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as ex:
        yield ex


def start_longpoll(pool: ThreadPoolExecutor, url: str, token: str, cursor: dict[str, int], timeout: float = 480) -> Future[httpx.Response]:
    return pool.submit(longpoll, url, token, {"cursor": cursor, "timeout": timeout})


def subscriber_count(url: str, token: str) -> int:
    """The notification server's subscriber count (shown to an authenticated caller only)."""
    resp = httpx.get(url + "/api/v1/notify", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return int(resp.json()["subscribers"])


def wait_subscribed(url: str, count: int, token: str) -> None:
    """Block until the notification server holds at least ``count`` subscriptions, so a
    test commits only after its waiter is registered (ordering, not a sleep)."""
    import time

    while subscriber_count(url, token) < count:
        time.sleep(0.01)
