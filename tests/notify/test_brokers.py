"""Across processes: commits in a metadata process wake subscribers held by a separate
notification process, joined by Redis and, separately, by NATS; a broker restart leaves no
subscriber stale; the account topic reaches open connections."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from cubby.client.api import ApiClient
from cubby.client.notify import PushWaiter
from tests.conftest import require_service
from tests.helpers.live_server import LiveServer
from tests.notify.conftest import Account, start_longpoll, wait_subscribed, ws_connect, ws_recv

BROKERS = ["redis", "nats"]


@dataclass
class Pair:
    """A metadata process and a notification process on one database and one broker."""

    meta: LiveServer
    notify: LiveServer
    broker_url: str

    def account(self) -> Account:
        token = self.meta.add_user(f"u{uuid.uuid4().hex[:10]}")
        api = ApiClient(self.meta.url, token)
        return Account(api, token, int(api.account()["root_ns"]))

    def info(self, token: str) -> dict[str, int]:
        auth = {"Authorization": f"Bearer {token}"}
        return dict(httpx.get(self.notify.url + "/api/v1/notify", headers=auth, timeout=30).json())

    def stop(self) -> None:
        self.notify.stop()
        self.meta.stop()


def start_pair(tmp: Path, broker_url: str) -> Pair:
    db = f"sqlite:///{tmp / 'meta.db'}"
    args = ["--broker", broker_url]
    meta = LiveServer(tmp / "meta", db_url=db, role="meta,blocks", extra_args=args).start()
    notify = LiveServer(tmp / "notify", db_url=db, role="notify", extra_args=args).start()
    return Pair(meta, notify, broker_url)


def shared_broker_url(kind: str) -> str:
    require_service(kind)
    prefix = f"t{uuid.uuid4().hex[:12]}"  # keeps parallel test runs on the shared server apart
    return f"redis://127.0.0.1:6379/0?prefix={prefix}" if kind == "redis" else f"nats://127.0.0.1:4222?prefix={prefix}"


class OwnBroker:
    """A redis-server or nats-server of the test's own on a free port, so that it can be
    stopped and started again without touching the machine's shared server."""

    def __init__(self, kind: str, tmp: Path) -> None:
        binary = "redis-server" if kind == "redis" else "nats-server"
        path = shutil.which(binary)
        if path is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{binary} is not installed; CI=true requires it")
            pytest.skip(f"{binary} is not installed")
        self.kind, self.binary, self.tmp = kind, path, tmp
        self.port: int | None = None
        """NATS: the port the server picked on its first start, and binds again on restarts."""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.kind == "redis":  # a unix socket: nothing on the loopback ports to race for
            return f"unix://{self.tmp / 'redis.sock'}?db=0"
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.kind == "redis":
            args = [self.binary, "--port", "0", "--unixsocket", str(self.tmp / "redis.sock"), "--save", "",
                    "--appendonly", "no", "--dir", str(self.tmp)]
        else:  # -p -1: the server picks a free port and writes it to a ports file
            ports_dir = self.tmp / "nats-ports"
            ports_dir.mkdir(exist_ok=True)
            args = [self.binary, "-a", "127.0.0.1", "-p", str(self.port or -1), "--ports_file_dir", str(ports_dir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket

        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary} exited with {self.proc.returncode}")
            try:
                if self.kind == "redis":
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(str(self.tmp / "redis.sock"))
                    return
                if self.port is None:
                    ports = ports_dir / f"nats-server_{self.proc.pid}.ports"
                    if not ports.exists() or not ports.read_text().strip():
                        raise OSError("no ports file yet")
                    self.port = int(json.loads(ports.read_text())["nats"][0].rsplit(":", 1)[1])
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except (OSError, ValueError, KeyError):
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(params=BROKERS)
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    p = start_pair(tmp_path, shared_broker_url(request.param))
    yield p
    p.stop()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as ex:
        yield ex


def test_a_commit_in_the_meta_process_wakes_long_polls_and_websockets_in_the_notify_process(
    pair: Pair, pool: ThreadPoolExecutor
) -> None:
    alice, bob = pair.account(), pair.account()
    before = pair.info(alice.token)["subscribers"]
    waiting = start_longpoll(pool, pair.notify.url, alice.token, alice.cursor())
    with ws_connect(pair.notify.url, alice.token) as ws:
        ws.send('{"cursor": {"%d": %d}}' % (alice.ns_id, alice.head()))
        assert ws_recv(ws)["type"] == "subscribed"
        wait_subscribed(pair.notify.url, before + 2, alice.token)
        bob.api.mkdir("/b")
        alice.api.mkdir("/a")
        answer = waiting.result().json()
        assert answer["changed"] is True and answer["heads"] == {str(alice.ns_id): alice.head()}
        assert ws_recv(ws) == {"type": "changed", "heads": {str(alice.ns_id): alice.head()}}


def test_the_account_topic_reaches_open_connections(pair: Pair, pool: ThreadPoolExecutor) -> None:
    """What the shared-folders code triggers with `ServerContext.account_changed`: here the
    message is published on the broker directly, after revoking the listening token."""
    alice = pair.account()
    second = alice.api.create_token("listener")
    before = pair.info(alice.token)["subscribers"]
    waiting = start_longpoll(pool, pair.notify.url, alice.token, alice.cursor())
    with ws_connect(pair.notify.url, second["token"]) as ws:
        ws.send('{"cursor": {"%d": %d}}' % (alice.ns_id, alice.head()))
        assert ws_recv(ws)["type"] == "subscribed"
        wait_subscribed(pair.notify.url, before + 2, alice.token)
        alice.api.revoke_token(second["id"])
        publish_account_change(pair.broker_url, _user_id(alice))
        assert waiting.result().json()["account_changed"] is True
        assert ws_recv(ws)["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=60)
        assert ws.close_code == 4401


def _user_id(a: Account) -> int:
    return int(a.api.account()["user_id"])


def publish_account_change(broker_url: str, user_id: int) -> None:
    import asyncio

    from cubby.notify.base import open_broker, user_topic

    async def run() -> None:
        broker = open_broker(broker_url)
        await broker.publish(user_topic(user_id), b"")
        await broker.close()

    asyncio.run(run())


@pytest.mark.parametrize("kind", BROKERS)
def test_after_a_broker_restart_no_subscriber_stays_stale(kind: str, tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    broker = OwnBroker(kind, tmp_path)
    broker.start()
    p = start_pair(tmp_path, broker.url)
    try:
        alice = p.account()
        cursor = alice.cursor()
        waiting = start_longpoll(pool, p.notify.url, alice.token, cursor)
        with ws_connect(p.notify.url, alice.token) as ws:
            ws.send('{"cursor": {"%d": %d}}' % (alice.ns_id, alice.head()))
            assert ws_recv(ws)["type"] == "subscribed"
            wait_subscribed(p.notify.url, 2, alice.token)
            resyncs = p.info(alice.token)["resyncs"]
            broker.stop()
            # The commit lands while the broker is down, and the metadata process dies before
            # it can publish: only the notification process's resynchronisation can tell.
            alice.api.mkdir("/during-the-outage")
            head = alice.head()
            p.meta.stop(kill=True)
            broker.start()
            answer = waiting.result().json()
            assert answer["changed"] is True and answer["heads"] == {str(alice.ns_id): head}
            assert ws_recv(ws) == {"type": "changed", "heads": {str(alice.ns_id): head}}
            assert p.info(alice.token)["resyncs"] > resyncs
            # And the pair works on: the restarted metadata process publishes again.
            p.meta.start()
            waiting = start_longpoll(pool, p.notify.url, alice.token, {str(alice.ns_id): head})
            alice.api.mkdir("/after")
            assert waiting.result().json()["heads"] == {str(alice.ns_id): alice.head()}
            assert ws_recv(ws) == {"type": "changed", "heads": {str(alice.ns_id): alice.head()}}
    finally:
        p.stop()
        broker.stop()


def test_push_waiter_polls_while_the_notify_process_is_down_and_pushes_again_after(tmp_path: Path) -> None:
    p = start_pair(tmp_path, shared_broker_url("redis"))
    try:
        alice = p.account()
        # The waiter talks to the notification process; the metadata process serves the polls.
        waiter = PushWaiter(ApiClient(p.meta.url, alice.token), url=p.notify.url, fallback_min=0.05, fallback_max=0.2)
        p.notify.stop()
        result: list[bool] = []
        before = {alice.ns_id: alice.head()}  # read here: in the thread it could follow the mkdir
        t = threading.Thread(target=lambda: result.append(waiter.wait(before, 600)))
        t.start()
        alice.api.mkdir("/x")
        t.join()
        assert result == [True] and waiter.pushing is False
        p.notify.start()
        t = threading.Thread(target=lambda: result.append(waiter.wait({alice.ns_id: alice.head()}, 600)))
        t.start()
        wait_subscribed(p.notify.url, 1, alice.token)
        alice.api.mkdir("/y")
        t.join()
        assert result == [True, True] and waiter.pushing is True
        waiter.close()
    finally:
        p.stop()
