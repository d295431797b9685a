"""The lean front end's own behaviour: HTTP it refuses, and clients that go away."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_service
from tests.helpers.live_server import LiveServer
from tests.notify.conftest import account, subscriber_count


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, LiveServer]]:
    require_service("redis")
    tmp: Path = tmp_path_factory.mktemp("wire")
    db = f"sqlite:///{tmp / 'meta.db'}"
    broker = ["--broker", f"redis://127.0.0.1:6379/0?prefix=t{uuid.uuid4().hex[:12]}"]
    with (
        LiveServer(tmp / "meta", db_url=db, role="meta", extra_args=broker) as meta,
        LiveServer(tmp / "notify", db_url=db, role="notify", extra_args=broker) as notify,
    ):
        yield meta, notify


def subscribers(notify: LiveServer, token: str) -> int:
    return subscriber_count(notify.url, token)


def raw(notify: LiveServer, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", notify.port), timeout=60) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
        return data


@pytest.mark.parametrize(
    "request_bytes, status, code",
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_http"),
        (b"GET /api/v1/nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 421, "wrong_role"),  # the meta role's space
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not_found"),
        (b"GET /api/v1/notify/longpoll HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
        (b"GET /api/v1/notify/ws HTTP/1.1\r\nHost: x\r\n\r\n", 426, "upgrade_required"),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 413, "payload_too_large"),
        (b"POST /api/v1/notify/longpoll HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n" + b"{" * 2000000,
         413, "payload_too_large"),
    ],
    # (named, not shown whole: a test's id goes into the environment of what it starts, see
    # tests/conftest.py's `LONGEST_NODE_ID`)
    ids=["not-http", "meta-route", "no-route", "longpoll-get", "ws-no-upgrade", "long-target", "huge-body"],
)
def test_requests_the_lean_server_refuses(pair: tuple[LiveServer, LiveServer], request_bytes: bytes, status: int, code: str) -> None:
    _, notify = pair
    answer = raw(notify, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode()
    assert json.loads(body)["code"] == code


def test_a_long_poll_whose_client_leaves_is_forgotten_at_once(pair: tuple[LiveServer, LiveServer]) -> None:
    meta, notify = pair
    alice = account(meta)
    before = subscribers(notify, alice.token)
    body = json.dumps({"cursor": alice.cursor(), "timeout": 480}).encode()
    s = socket.create_connection(("127.0.0.1", notify.port))
    s.sendall(
        b"POST /api/v1/notify/longpoll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + alice.token.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    while subscribers(notify, alice.token) == before:
        time.sleep(0.01)
    s.close()
    while subscribers(notify, alice.token) != before:  # never true if the hub kept it until its timeout
        time.sleep(0.01)
    # And a commit afterwards finds nobody to write to, without harm.
    alice.api.mkdir("/after")
    assert subscribers(notify, alice.token) == before
